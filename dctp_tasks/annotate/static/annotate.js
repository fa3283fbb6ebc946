// Keyboard judging on the queue page: g / b / s submit the judgement form, u the undo form; c and r focus the
// category and rationale fields, Esc leaves them. One submission per page: a double key press sends nothing more
// (and the server would answer a repeated request id with the first judgement anyway).
(function () {
  "use strict";
  var judge = document.getElementById("judge-form");
  var undo = document.getElementById("undo-form");
  var sent = false;
  var labels = { g: "good", b: "bad", s: "skip" };

  // Inside the Airflow UI the page is a frame: take the keyboard when it opens, so g / b / s work at once.
  if (judge && (!document.activeElement || document.activeElement === document.body)) { window.focus(); }

  function submit(form, button) {
    if (sent || !form) { return; }
    sent = true;
    if (form.requestSubmit) { form.requestSubmit(button || undefined); } else { form.submit(); }
    document.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
  }

  [judge, undo].forEach(function (form) {
    if (form) { form.addEventListener("submit", function () { sent = true; }); }
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing || event.repeat) { return; }
    var target = event.target;
    var editing = target && /^(TEXTAREA|INPUT|SELECT)$/.test(target.tagName);
    if (editing) {
      if (event.key === "Escape") { target.blur(); }
      return;
    }
    var key = event.key;
    if (judge && labels[key]) {
      event.preventDefault();
      submit(judge, document.getElementById(labels[key]));
    } else if (undo && key === "u") {
      event.preventDefault();
      submit(undo);
    } else if (key === "c" && document.getElementById("category")) {
      event.preventDefault();
      document.getElementById("category").focus();
    } else if (key === "r" && document.getElementById("rationale")) {
      event.preventDefault();
      document.getElementById("rationale").focus();
    }
  });
})();
