window.attnrefErrors = [];
window.addEventListener("error", function (event) {
  window.attnrefErrors.push("error: " + event.message);
  if (window.attnrefStatus) window.attnrefStatus();
});
window.addEventListener("unhandledrejection", function (event) {
  window.attnrefErrors.push("unhandled rejection: " + event.reason);
  if (window.attnrefStatus) window.attnrefStatus();
});
(function () {
  var original = console.error;
  console.error = function () {
    window.attnrefErrors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    if (window.attnrefStatus) window.attnrefStatus();
    return original.apply(console, arguments);
  };
})();
