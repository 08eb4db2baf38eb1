// With a Stripe publishable key: Stripe's card element collects the card, Stripe turns it
// into a token, and the form posts the token (the card number never reaches our server).
(function () {
  "use strict";
  var form = document.getElementById("pay-form");
  if (!form || !window.Stripe) return;
  var stripe = window.Stripe(form.getAttribute("data-stripe-key"));
  var card = stripe.elements().create("card");
  card.mount("#card-element");
  var errors = document.getElementById("card-errors");
  card.on("change", function (event) { errors.textContent = event.error ? event.error.message : ""; });
  form.addEventListener("submit", function (event) {
    var token = document.getElementById("stripe-token");
    if (token.value) return;
    event.preventDefault();
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    stripe.createToken(card).then(function (result) {
      if (result.error) {
        errors.textContent = result.error.message;
        button.disabled = false;
      } else {
        token.value = result.token.id;
        form.submit();
      }
    });
  });
})();
