// The cite box under each figure (book/_ext/devrl_book.py) names the figure's page relative to
// the book; here its BibTeX url becomes the address the page is actually read at.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("pre.devrl-bibtex[data-anchor]").forEach(function (pre) {
    var here = new URL(window.location.href);
    here.hash = pre.getAttribute("data-anchor");
    pre.textContent = pre.textContent.replace(/url = \{[^}]*\}/, "url = {" + here.href + "}");
  });
});
