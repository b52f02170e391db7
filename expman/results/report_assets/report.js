// The runs table of expman's report: rows come from one JSON blob, the page draws at most
// LIMIT of them, filtered by every word typed (in any column) and sorted by a clicked column.
(function () {
  "use strict";
  var LIMIT = 1000;
  var data = JSON.parse(document.getElementById("runs-data").textContent);
  var columns = data.columns;
  var rows = data.rows;
  var filter = document.getElementById("filter");
  var count = document.getElementById("count");
  var table = document.getElementById("runs-table");
  var body = table.tBodies[0];
  var texts = rows.map(function (row) {
    return row.map(text).join("\u0000").toLowerCase();
  });
  var order = rows.map(function (_, i) { return i; });
  var sorted = { column: -1, descending: false };

  function text(value) {
    return value === null ? "" : String(value);
  }

  function compare(a, b) {
    if (a === b) { return 0; }
    if (a === null) { return 1; }
    if (b === null) { return -1; }
    if (typeof a === "number" && typeof b === "number") { return a - b; }
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function sortBy(column) {
    sorted.descending = sorted.column === column ? !sorted.descending : false;
    sorted.column = column;
    var sign = sorted.descending ? -1 : 1;
    order.sort(function (i, j) {
      var a = rows[i][column];
      var b = rows[j][column];
      if (a === null || b === null) { return compare(a, b) || i - j; }
      return sign * compare(a, b) || i - j;
    });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, k) {
      th.setAttribute("aria-sort", k === column ? (sorted.descending ? "descending" : "ascending") : "none");
    });
    render();
  }

  function render() {
    var terms = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = order.filter(function (i) {
      return terms.every(function (term) { return texts[i].indexOf(term) >= 0; });
    });
    var fragment = document.createDocumentFragment();
    shown.slice(0, LIMIT).forEach(function (i) {
      var tr = document.createElement("tr");
      rows[i].forEach(function (value) {
        var td = document.createElement("td");
        td.textContent = text(value);
        if (typeof value === "number") { td.className = "num"; }
        tr.appendChild(td);
      });
      fragment.appendChild(tr);
    });
    body.replaceChildren(fragment);
    count.textContent = shown.length + " of " + rows.length + " runs" +
      (shown.length > LIMIT ? " (the first " + LIMIT + " shown)" : "");
  }

  var header = document.createElement("tr");
  columns.forEach(function (name, k) {
    var th = document.createElement("th");
    th.textContent = name;
    th.setAttribute("aria-sort", "none");
    th.addEventListener("click", function () { sortBy(k); });
    header.appendChild(th);
  });
  table.tHead.appendChild(header);
  filter.addEventListener("input", render);
  render();
})();
