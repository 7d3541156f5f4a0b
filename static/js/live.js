// Every live page (a poll, a stream) says when its server stops answering: htmx keeps
// polling after a failed request, so the banner goes again with the first answer. No inline
// script: the Content-Security-Policy forbids it.
(function () {
  "use strict";

  function banner() {
    return document.getElementById("connection-lost");
  }

  function lost() {
    var element = banner();
    if (element && element.hidden) {
      element.hidden = false;
      document.body.classList.add("is-offline");
    }
  }

  function back() {
    var element = banner();
    if (element && !element.hidden) {
      element.hidden = true;
      document.body.classList.remove("is-offline");
    }
  }

  document.addEventListener("htmx:sendError", lost);
  document.addEventListener("htmx:sseError", lost);
  document.addEventListener("htmx:responseError", function (event) {
    var status = event.detail.xhr ? event.detail.xhr.status : 0;
    if (status === 0 || status >= 502) {
      lost();
    }
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.successful) {
      back();
    }
  });
  document.addEventListener("htmx:sseOpen", back);
})();
