// tunehook dashboard: times in the browser's zone, and live pages.
//
// A page that names a stream in <body data-live="..."> holds one
// EventSource on it. On each event the page is fetched again and its
// #live region swapped in place, so what the server renders is the one
// truth and nothing is drawn twice. The stream is closed on pagehide:
// browsers allow six HTTP/1.1 connections per host, and streams kept open
// by pages in the back/forward cache would soon make every load hang.
(function () {
  "use strict";

  function localizeTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      if (!isNaN(at.getTime())) {
        el.textContent = at.toLocaleString();
      }
    });
  }

  localizeTimes(document);

  var url = document.body.dataset.live;
  if (!url || !window.EventSource || !window.fetch) {
    return;
  }

  var source = null;
  var timer = null;
  var fetching = false;
  var wanted = false;

  function refresh() {
    if (fetching) {
      wanted = true;
      return;
    }
    fetching = true;
    fetch(window.location.href, {
      credentials: "same-origin",
      headers: { Accept: "text/html" },
    })
      .then(function (response) {
        if (!response.ok || response.redirected) {
          throw new Error("the page answered " + response.status);
        }
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser()
          .parseFromString(text, "text/html")
          .getElementById("live");
        var current = document.getElementById("live");
        if (fresh && current) {
          var node = document.importNode(fresh, true);
          current.replaceWith(node);
          localizeTimes(node);
          var count = Number(document.body.dataset.refreshes || "0") + 1;
          document.body.dataset.refreshes = String(count);
        }
      })
      .catch(function () {
        // Signed out or the server went away: the next event tries again.
      })
      .finally(function () {
        fetching = false;
        if (wanted) {
          wanted = false;
          soon();
        }
      });
  }

  function soon() {
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, 200);
  }

  function open() {
    if (source) {
      return;
    }
    source = new EventSource(url);
    source.onopen = function () {
      document.body.dataset.liveState = "open";
    };
    source.onerror = function () {
      if (source && source.readyState === EventSource.CLOSED) {
        document.body.dataset.liveState = "closed";
      } else {
        document.body.dataset.liveState = "reconnecting";
      }
    };
    ["finetune.status_changed", "finetune.updated", "message"].forEach(function (kind) {
      source.addEventListener(kind, soon);
    });
  }

  function close() {
    if (source) {
      source.close();
      source = null;
    }
    window.clearTimeout(timer);
    document.body.dataset.liveState = "closed";
  }

  window.addEventListener("pagehide", close);
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      // Back from the back/forward cache: catch up, then follow again.
      open();
      refresh();
    }
  });
  open();
})();
