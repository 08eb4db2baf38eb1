// The only script of the pages: counts down the time left to pay for an order, every
// second, from the milliseconds the server computed (so the visitor's clock does not
// matter), and says "Order expired" when it reaches zero, without a reload.
(function () {
  "use strict";
  var box = document.getElementById("countdown");
  var shown = document.getElementById("time-left");
  if (!box || !shown) return;
  var deadline = performance.now() + Number(box.getAttribute("data-ms-left"));

  function pad(n) { return n < 10 ? "0" + n : String(n); }

  // Same wording as the server: "14m 05s", "1h 02m 03s", "42s".
  function format(seconds) {
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h > 0) return h + "h " + pad(m) + "m " + pad(s) + "s";
    if (m > 0) return m + "m " + pad(s) + "s";
    return s + "s";
  }

  function expire() {
    document.getElementById("time-left-line").hidden = true;
    document.getElementById("expired-line").hidden = false;
    var pay = document.getElementById("pay-section");
    if (pay) {
      pay.hidden = true;
      var buttons = pay.querySelectorAll("button");
      for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
    }
    var status = document.getElementById("order-status");
    if (status) status.textContent = "Expired";
  }

  function tick() {
    var left = deadline - performance.now();
    if (left <= 0) { expire(); return; }
    shown.textContent = format(Math.ceil(left / 1000));
    // Wake just after the next whole second of the remaining time.
    setTimeout(tick, (left % 1000) + 20);
  }
  tick();
})();
