// Injected into a copy of a built page by tests/test_book.py, which loads the copy in a frame of
// the width under test (headless Chromium has a minimum window width of 500 px). Once every
// chart has drawn, it measures what a reader at that width would see and posts the findings as
// JSON to the frame's parent, which writes them into the DOM that Chromium dumps.
(function () {
  var TOLERANCE = 1.5; // px: sub-pixel rounding of scaled SVG
  function box(el) { return el.getBoundingClientRect(); }
  function outside(inner, outer) {
    return inner.left < outer.left - TOLERANCE || inner.right > outer.right + TOLERANCE;
  }
  function report() {
    var problems = [], charts = [];
    var article = document.querySelector("article.bd-article") || document.body;
    var column = box(article);
    var doc = document.documentElement;
    if (doc.scrollWidth > window.innerWidth + TOLERANCE) {
      // name the outermost elements that stick out, so the failure says what to fix; one
      // inside a box that scrolls or clips (a code block) cannot widen the page
      var culprits = [];
      function clipped(el) {
        for (var p = el.parentElement; p && p !== document.body; p = p.parentElement) {
          if (getComputedStyle(p).overflowX !== "visible") return true;
        }
        return false;
      }
      document.querySelectorAll("body *").forEach(function (el) {
        var parent = el.parentElement;
        if (box(el).right > window.innerWidth + TOLERANCE && !clipped(el) &&
            !(parent && box(parent).right > window.innerWidth + TOLERANCE)) {
          culprits.push(el.tagName.toLowerCase() + "." + (el.className || "").toString()
                        .split(" ").join("."));
        }
      });
      problems.push("the page scrolls sideways: " + doc.scrollWidth + " px in a " +
                    window.innerWidth + " px window, because of " + culprits.slice(0, 3).join(", "));
    }
    document.querySelectorAll(".devrl-chart").forEach(function (el) {
      var name = el.getAttribute("data-figure") || el.id;
      var svg = el.querySelector("svg");
      if (!svg) { problems.push(name + ": no chart drawn"); return; }
      var drawn = box(svg), holder = box(el);
      var natural = svg.viewBox && svg.viewBox.baseVal ? svg.viewBox.baseVal.width : drawn.width;
      var scale = natural ? drawn.width / natural : 1;
      charts.push({column: Math.round(column.width), figure: name, natural: Math.round(natural), drawn: Math.round(drawn.width),
                   scale: Math.round(scale * 1000) / 1000,
                   label: el.getAttribute("aria-label") || svg.getAttribute("aria-label") || ""});
      if (outside(drawn, holder)) problems.push(name + ": the chart is wider than its container");
      if (el.scrollWidth > el.clientWidth + TOLERANCE) {
        problems.push(name + ": the chart's container scrolls sideways");
      }
      if (outside(drawn, column)) problems.push(name + ": the chart leaves the text column");
      // Every panel, axis and legend lies inside the drawing (nothing is cut off by the SVG).
      svg.querySelectorAll("g.role-legend, g.role-axis, g.role-scope, g.role-title")
        .forEach(function (part) {
          var b = box(part);
          if (b.width === 0 && b.height === 0) return;
          if (outside(b, drawn) || b.top < drawn.top - TOLERANCE ||
              b.bottom > drawn.bottom + TOLERANCE) {
            problems.push(name + ": a " + part.getAttribute("class").replace(/.*role-/, "") +
                          " is cut off");
          }
        });
      if (!(el.getAttribute("aria-label") || svg.getAttribute("aria-label"))) {
        problems.push(name + ": the chart has no text alternative");
      }
    });
    // Display equations fit the text column (a long one may scroll inside its own box, never
    // the page).
    document.querySelectorAll("mjx-container[display='true']").forEach(function (m, i) {
      var b = box(m);
      if (outside(b, column)) problems.push("equation " + (i + 1) + " leaves the text column");
      var wide = m.scrollWidth > m.clientWidth + TOLERANCE;
      var scrolls = getComputedStyle(m).overflowX === "auto";
      if (wide && !scrolls) problems.push("equation " + (i + 1) + " is cut off");
      if (wide) charts.push({equation: i + 1, scrolls: true});
    });
    document.querySelectorAll("article img").forEach(function (img) {
      if (outside(box(img), column)) problems.push("image " + img.src.split("/").pop() +
                                                   " leaves the text column");
    });
    var found = JSON.stringify({width: window.innerWidth, problems: problems, charts: charts});
    if (window.parent !== window) window.parent.postMessage(found, "*"); // the harness's frame
    var out = document.createElement("pre");
    out.id = "devrl-layout";
    out.textContent = found;
    document.body.appendChild(out);
  }
  var waited = 0;
  function ready() {
    var all = document.querySelectorAll(".devrl-chart");
    var drawn = document.querySelectorAll(".devrl-chart svg");
    if ((drawn.length >= all.length && document.readyState === "complete") || waited > 15000) {
      setTimeout(report, 200);
    } else { waited += 100; setTimeout(ready, 100); }
  }
  window.addEventListener("load", ready);
})();
