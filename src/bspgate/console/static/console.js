// bspgate console: the live tail (server-sent events) and nothing else. Plain JS, no library.
"use strict";
(function () {
  function cell(row, text, href) {
    var td = document.createElement("td");
    if (href) {
      var a = document.createElement("a");
      a.href = href;
      a.textContent = text;
      td.appendChild(a);
    } else {
      td.textContent = text;
    }
    row.appendChild(td);
  }

  function addRow(body, e) {
    var row = document.createElement("tr");
    row.className = "fresh";
    row.dataset.seq = e.seq;
    cell(row, e.id, "/console/events/" + encodeURIComponent(e.id));
    cell(row, e.type);
    cell(row, e.channel);
    cell(row, e.contact_id, "/console/contacts/" + encodeURIComponent(e.contact_id));
    cell(row, (e.bsuid || "") + (e.phone ? " · " + e.phone : ""));
    cell(row, (e.detail || "") + (e.text ? " · " + e.text : ""));
    cell(row, e.time);
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 200) body.deleteRow(body.rows.length - 1);
    var empty = document.getElementById("no-events");
    if (empty) empty.remove();
  }

  function startTail() {
    var table = document.getElementById("events");
    var state = document.getElementById("tail-state");
    var toggle = document.getElementById("tail-toggle");
    if (!table || !table.dataset.stream || !window.EventSource) return;
    var body = document.getElementById("event-rows");
    var source = null;
    var url = table.dataset.stream;
    function open() {
      source = new EventSource(url);
      source.onopen = function () { state.textContent = "Live tail: on"; };
      source.onerror = function () { state.textContent = "Live tail: reconnecting…"; };
      source.onmessage = function (message) {
        addRow(body, JSON.parse(message.data));
        if (message.lastEventId) url = url.replace(/after=[^&]*/, "after=" + message.lastEventId);
      };
    }
    toggle.addEventListener("click", function () {
      if (source) {
        source.close();
        source = null;
        state.textContent = "Live tail: paused";
        toggle.textContent = "Resume live tail";
        toggle.setAttribute("aria-pressed", "false");
      } else {
        open();
        toggle.textContent = "Pause live tail";
        toggle.setAttribute("aria-pressed", "true");
      }
    });
    window.addEventListener("pagehide", function () { if (source) source.close(); });
    open();
  }

  document.addEventListener("DOMContentLoaded", startTail);
})();
