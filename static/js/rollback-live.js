// The rollback page's #rollback-status fragment is replaced by htmx whenever it changes
// (polled every second). The server cannot know which <details> the operator opened, so
// remember them before a swap and open them again once the new fragment has settled
// (htmx restores the focused element by its id itself; forms being filled in are kept
// with hx-preserve). No inline script: the page's Content-Security-Policy forbids it.
(function () {
  "use strict";
  var openIds = [];

  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail.target;
    if (target && target.id === "rollback-status") {
      openIds = Array.prototype.map.call(
        target.querySelectorAll("details[open][id]"),
        function (details) { return details.id; }
      );
    }
  });

  document.addEventListener("htmx:afterSettle", function (event) {
    if (!event.target || event.target.id !== "rollback-status") {
      return;
    }
    openIds.forEach(function (id) {
      var details = document.getElementById(id);
      if (details) {
        details.open = true;
      }
    });
  });
})();
