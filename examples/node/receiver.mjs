// A bspgate subscriber in Node: verify (Standard Webhooks), parse (CloudEvents), dedupe.
//
//   npm install
//   WEBHOOK_SECRET=whsec_... node receiver.mjs 9000
import { createServer } from "node:http";
import { HTTP } from "cloudevents";
import { Webhook } from "standardwebhooks";

const webhook = new Webhook(process.env.WEBHOOK_SECRET.replace(/^whsec_/, ""));
const seen = new Set(); // use your database in production: webhook-id is the event id
const port = Number(process.argv[2] ?? 9000);

createServer((request, response) => {
  const chunks = [];
  request.on("data", (chunk) => chunks.push(chunk));
  request.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    try {
      webhook.verify(body, request.headers);
    } catch {
      response.writeHead(401).end();
      return;
    }
    const event = HTTP.toEvent({ headers: request.headers, body });
    if (!seen.has(event.id)) {
      // a retry or a replay carries the same id
      seen.add(event.id);
      const contact = event.data?.contact?.id ?? null;
      console.log(JSON.stringify({ id: event.id, type: event.type, contact_id: contact }));
    }
    response.writeHead(204).end();
  });
}).listen(port, "127.0.0.1");
