/* mprofile-ipy report enhancer. The report is complete without this script (the table, the
   flame graph and the timeline are rendered on the server); where scripts run, it adds
   sorting, grouping, top-N, filtering, row unfolding, flame zoom/search and tooltips.
   Every report finds its own root from its own script element and reads its data from the
   JSON script element (class mpr-data) inside that root, so reports never
   clash; the only global is window.mprofileReport. Text goes into the DOM with textContent,
   never as HTML. */
(function () {
  "use strict";
  var VERSION = 2;
  if (window.mprofileReport && window.mprofileReport.version >= VERSION) { return; }
  var Z95 = 1.96;
  var UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

  // -- formats: the same as the Python side (units.format_size, interactive._pm, ...) ------
  function fmtSize(v, signed) {
    if (v === null || v === undefined) { return "-"; }
    var plus = signed ? "+" : "";
    for (var i = 0; i < UNITS.length; i++) {
      if (i === 0) {
        var r = Math.round(v);
        if (Math.abs(r) < 1024) { return (r >= 0 ? plus : "") + r + " B"; }
      } else if (Math.abs(v) < 1023.95 || i === UNITS.length - 1) {
        return (v >= 0 ? plus : "") + v.toFixed(1) + " " + UNITS[i];
      }
      v /= 1024;
    }
    return "-";
  }
  function fmtCount(v, signed) {
    if (v === null || v === undefined) { return "-"; }
    var n = Math.round(v);
    var s = Math.abs(n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return (n < 0 ? "-" : (signed && n ? "+" : "")) + s;
  }
  function fmtPm(err, exact) {
    if (exact) { return "exact"; }
    var half = Z95 * err;
    if (half < 0.005) { return "\u00b10%"; }
    if (half >= 10) { return "\u00b1>999%"; }
    return "\u00b1" + (half * 100).toFixed(0) + "%";
  }
  function fmtShare(v) { return (v * 100).toFixed(1) + "%"; }
  function fmtTime(s) {  // renderers.fmt_time
    if (s === null || s === undefined) { return "-"; }
    if (s < 1e-3) { return (s * 1e6).toFixed(0) + " \u00b5s"; }
    if (s < 1) { return (s * 1e3).toFixed(0) + " ms"; }
    if (s < 60) { return s.toFixed(2) + " s"; }
    return Math.floor(s / 60).toFixed(0) + " min " + (s % 60).toFixed(0) + " s";
  }
  function plural(n, noun) { return fmtCount(n) + " " + noun + (n === 1 ? "" : "s"); }
  function chainText(c) {  // interactive.chain_text
    var parts = [c.root].concat(c.steps);
    if (c.steps.length || (c.kind !== "unreachable_cycle" && c.kind !== "held_from_c")) {
      parts.push(c.target);
    }
    return parts.filter(function (p) { return p; }).join(" -> ");
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }

  // -- one report -------------------------------------------------------------------------
  function Report(root, data) {
    this.root = root;
    this.data = data;
    this.kind = data.kind;
    this.grouping = data.default_grouping;
    this.top = data.top;
    this.filter = "";
    this.sortKey = data.kind === "diff" ? "size_diff" : "size";
    this.sortDir = -1;
    this.tip = root.querySelector(".mpr-tip");
    root.classList.add("mpr-live");
    // The SVG pictures come as text (see interactive._deferred); all of it was escaped on the
    // server, so it goes in as markup, replacing the static fallback before it.
    root.querySelectorAll("script.mpr-deferred").forEach(function (src) {
      var slot = src.previousElementSibling;
      if (slot && slot.classList.contains("mpr-slot")) { slot.innerHTML = src.textContent; }
    });
    if (data.groupings && Object.keys(data.groupings).length) { this.initTable(); }
    if (root.querySelector(".mpr-flame-svg")) { this.initFlame(); }
    if (root.querySelector(".mpr-timeline-svg")) { this.initTimeline(); }
  }

  Report.prototype.showTip = function (ev, text) {
    var tip = this.tip;
    if (!tip) { return; }
    tip.textContent = text;
    tip.hidden = false;
    var box = this.root.getBoundingClientRect();
    var x = ev.clientX - box.left + 14, y = ev.clientY - box.top + 14;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    // Stay inside the report: hosts clip their outputs (JupyterLab's output area scrolls).
    if (x + w > box.width) { x = Math.max(0, ev.clientX - box.left - w - 10); }
    if (y + h > box.height) { y = Math.max(0, ev.clientY - box.top - h - 10); }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  };
  Report.prototype.hideTip = function () { if (this.tip) { this.tip.hidden = true; } };

  // -- table --------------------------------------------------------------------------------
  Report.prototype.initTable = function () {
    var self = this, root = this.root;
    var data = this.data, controls = el("div", "mpr-controls");
    function labelled(text, input) {
      var label = el("label", null, text + " ");
      label.appendChild(input);
      controls.appendChild(label);
      return input;
    }
    var group = labelled("group by", el("select", "mpr-group"));
    (data.grouping_order || Object.keys(data.groupings)).forEach(function (name) {
      var option = el("option", null, data.groupings[name].label);
      option.value = name;
      option.selected = name === data.default_grouping;
      group.appendChild(option);
    });
    var top = labelled("top", el("select", "mpr-top"));
    var sizes = [10, 20, 50, 100, 0];
    if (sizes.indexOf(data.top) < 0) { sizes.push(data.top); }
    sizes.sort(function (a, b) { return (a || 1e9) - (b || 1e9); });
    sizes.forEach(function (n) {
      var option = el("option", null, n ? String(n) : "all");
      option.value = String(n);
      option.selected = n === data.top;
      top.appendChild(option);
    });
    var filter = labelled("filter", el("input", "mpr-filter"));
    filter.type = "search";
    filter.placeholder = "file, function, source\u2026";
    controls.appendChild(el("span", "mpr-count mpr-muted"));
    var box = root.querySelector(".mpr-tablebox");
    box.parentNode.insertBefore(controls, box);
    var staticCaption = root.querySelector(".mpr-caption");
    if (staticCaption) { staticCaption.hidden = true; }
    if (group) { group.addEventListener("change", function () {
      self.grouping = group.value; self.renderTable(); }); }
    if (top) { top.addEventListener("change", function () {
      self.top = parseInt(top.value, 10) || 0; self.renderTable(); }); }
    if (filter) { filter.addEventListener("input", function () {
      self.filter = filter.value.toLowerCase(); self.renderTable(); }); }
    root.querySelector(".mpr-table thead").addEventListener("click", function (ev) {
      var th = ev.target.closest("th");
      if (!th || !th.dataset.key) { return; }
      if (self.sortKey === th.dataset.key) { self.sortDir = -self.sortDir; }
      else { self.sortKey = th.dataset.key; self.sortDir = th.dataset.key === "label" ? 1 : -1; }
      self.renderTable();
    });
    root.querySelector(".mpr-tablebox").addEventListener("click", function (ev) {
      // A click anywhere on a row unfolds its tracebacks; the summary toggles by itself.
      if (ev.target.closest("summary") || ev.target.closest(".mpr-tb") ||
          ev.target.closest(".mpr-why")) { return; }
      var tr = ev.target.closest("tr.mpr-row");
      var details = tr && tr.querySelector("details.mpr-tbs");
      if (details) { details.open = !details.open; }
    });
    this.renderTable();
  };

  Report.prototype.matches = function (row) {
    var needle = this.filter;
    if (!needle) { return true; }
    var texts = [row.label, row.detail];
    var data = this.data;
    row.tracebacks.forEach(function (t) {
      data.tracebacks[t].frames.forEach(function (f) {
        var fr = data.frames[f];
        texts.push(fr.where, fr.name, fr.source);
      });
    });
    return texts.some(function (t) { return t && t.toLowerCase().indexOf(needle) >= 0; });
  };

  Report.prototype.cells = function (row, scale) {
    var exact = this.data.exact, out = [];
    function bar(frac, cls) {
      var b = el("span", "mpr-bar " + cls);
      b.style.width = Math.max(1, Math.min(100, Math.round(100 * frac))) + "px";
      return b;
    }
    if (this.kind === "diff") {
      out.push([bar(scale ? Math.abs(row.size_diff) / scale : 0,
                    row.size_diff >= 0 ? "mpr-grow" : "mpr-shrink"), fmtSize(row.size_diff, true)]);
      out.push([exact ? "exact" : (row.diff_error ? "\u00b1" + fmtSize(Z95 * row.diff_error) : "\u00b10 B")]);
      out.push([fmtSize(row.size)]);
      out.push([fmtCount(row.count_diff, true)]);
      out.push([fmtCount(row.samples)]);
    } else {
      out.push([bar(scale ? row.size / scale : 0, "mpr-size"), fmtSize(row.size)]);
      out.push([fmtPm(row.error, exact)]);
      out.push([fmtShare(row.share)]);
      out.push([fmtCount(row.count)]);
      out.push([fmtCount(row.samples)]);
    }
    return out;
  };

  // What keeps a site alive (interactive._retention_html).
  Report.prototype.retentionBox = function (why) {
    var box = el("div", "mpr-why"), head = el("div", "mpr-why-head");
    head.appendChild(el("b", null, "Why still alive"));
    head.appendChild(document.createTextNode(" "));
    head.appendChild(el("span", "mpr-muted", plural(why.searched, "sampled block") +
      " searched in " + fmtTime(why.elapsed) + (why.when ? "; " + why.when : "")));
    box.appendChild(head);
    why.groups.forEach(function (g) {
      var story = el("div", "mpr-story");
      story.appendChild(el("div", null, plural(g.blocks, "block") + ", " + fmtSize(g.size) +
        ": " + g.description));
      if (g.chains.length) {
        var list = el("ol", "mpr-chains"), commands = [];
        g.chains.forEach(function (c) {
          var item = el("li");
          item.appendChild(el("code", "mpr-chain", chainText(c)));
          if (c.also.length) {
            item.appendChild(document.createTextNode(" "));
            item.appendChild(el("span", "mpr-muted", "(also named " + c.also.join(", ") + ")"));
          }
          if (c.command) {
            var free = el("div", "mpr-free", "free it with ");
            free.appendChild(el("code", "mpr-cmd", c.command));
            item.appendChild(free);
            if (commands.indexOf(c.command) < 0) { commands.push(c.command); }
          }
          list.appendChild(item);
        });
        story.appendChild(list);
        if (commands.length > 1) {
          var all = el("div", "mpr-free", "to free it, run all of: ");
          all.appendChild(el("code", "mpr-cmd", commands.join("; ")));
          story.appendChild(all);
        }
      }
      if (g.note) { story.appendChild(el("div", "mpr-muted", g.note)); }
      box.appendChild(story);
    });
    if (why.more) { box.appendChild(el("div", "mpr-muted", "\u2026 " + why.more + " more kinds of blocks")); }
    if (!why.groups.length) { box.appendChild(el("div", "mpr-muted", "no sampled block of this site is alive")); }
    return box;
  };

  Report.prototype.labelCell = function (row) {
    var data = this.data;
    var why = row.retention === null || row.retention === undefined ? null : data.retention[row.retention];
    var label = el(row.tracebacks.length || why ? "summary" : "span", "mpr-label", row.label);
    if (row.detail) { label.appendChild(document.createTextNode(" "));
      label.appendChild(el("code", "mpr-detail", row.detail)); }
    if (!row.tracebacks.length && !why) { return label; }
    var details = el("details", "mpr-tbs");
    details.appendChild(label);
    row.tracebacks.forEach(function (t) {
      var tb = data.tracebacks[t], box = el("div", "mpr-tb");
      var head = fmtSize(tb.size) + " \u00b7 " + plural(tb.samples, "sample") + " \u00b7 oldest frame first";
      if (tb.size_diff !== undefined && tb.size_diff !== null) { head = fmtSize(tb.size_diff, true) + " \u00b7 " + head; }
      box.appendChild(el("div", "mpr-muted", head));
      if (tb.cut) { box.appendChild(el("div", "mpr-muted", "\u2026 " + tb.cut + " older frames")); }
      tb.frames.forEach(function (f) {
        var fr = data.frames[f], div = el("div", "mpr-frame");
        div.appendChild(el("span", "mpr-where", fr.where));
        if (fr.name && fr.name !== "<module>") {
          div.appendChild(document.createTextNode(" "));
          div.appendChild(el("span", "mpr-fn", fr.name));
        }
        if (fr.source) { div.appendChild(el("div", "mpr-src", fr.source)); }
        box.appendChild(div);
      });
      details.appendChild(box);
    });
    if (row.more) { details.appendChild(el("div", "mpr-muted", "\u2026 " + row.more + " more tracebacks")); }
    if (why) { details.appendChild(this.retentionBox(why)); }
    return details;
  };

  Report.prototype.renderTable = function () {
    var self = this, group = this.data.groupings[this.grouping];
    var rows = group.rows.map(function (r, i) { return [r, i]; });
    var key = this.sortKey, dir = this.sortDir;
    var size = this.kind === "diff" ? function (r) { return Math.abs(r.size_diff); }
                                     : function (r) { return r.size; };
    var scale = 0;
    rows.forEach(function (p) { scale = Math.max(scale, size(p[0])); });
    var matching = rows.filter(function (p) { return self.matches(p[0]); });
    matching.sort(function (a, b) {
      var x = a[0][key], y = b[0][key], c;
      if (key === "size_diff") { x = Math.abs(x); y = Math.abs(y); }
      if (typeof x === "string") { c = x.localeCompare(y); } else { c = x - y; }
      return c * dir || a[1] - b[1];
    });
    var shown = this.top ? matching.slice(0, this.top) : matching;
    var tbody = this.root.querySelector(".mpr-table tbody");
    var fresh = document.createElement("tbody");
    shown.forEach(function (p) {
      var tr = el("tr", "mpr-row");
      tr.dataset.row = p[1];
      var td = el("td", "mpr-text");
      td.appendChild(self.labelCell(p[0]));
      tr.appendChild(td);
      self.cells(p[0], scale).forEach(function (parts) {
        var cell = el("td", "mpr-num");
        parts.forEach(function (x) { cell.appendChild(typeof x === "string" ? document.createTextNode(x) : x); });
        tr.appendChild(cell);
      });
      fresh.appendChild(tr);
    });
    if (!shown.length) {
      var tr = el("tr"), td = el("td", "mpr-muted",
        rows.length ? "no row matches the filter" : "no allocations in this profile");
      td.colSpan = 6; tr.appendChild(td); fresh.appendChild(tr);
    }
    tbody.parentNode.replaceChild(fresh, tbody);
    this.root.querySelectorAll(".mpr-table th").forEach(function (th) {
      if (th.dataset.key === key) { th.setAttribute("aria-sort", dir < 0 ? "descending" : "ascending"); }
      else { th.removeAttribute("aria-sort"); }
    });
    var caption = "by " + group.label + ", " + shown.length + " of " + rows.length + " rows" +
      (this.filter ? " (" + matching.length + " match the filter)" : "");
    var count = this.root.querySelector(".mpr-count");
    if (count) { count.textContent = caption; }
  };

  // -- flame graph --------------------------------------------------------------------------
  Report.prototype.initFlame = function () {
    var self = this, root = this.root, svg = root.querySelector(".mpr-flame-svg");
    var flat = [];
    (function walk(node) {  // pre-order over the whole tree: the server's data-i
      flat.push(node);
      node.children.forEach(walk);
    })(this.data.flame);
    this.flat = flat;
    this.nodes = Array.prototype.slice.call(svg.querySelectorAll(".mpr-node"));
    this.nodes.forEach(function (g) {
      g._x0 = parseFloat(g.dataset.x0); g._x1 = parseFloat(g.dataset.x1);
      g._depth = parseInt(g.dataset.depth, 10);
      var n = g._node = flat[parseInt(g.dataset.i, 10)];
      g._label = n ? (n.where ? n.name + " (" + n.where + ")" : n.name) : "";
      if (n) {
        var total = self.data.flame.size;
        g._title = g._label + "\n" + fmtSize(n.size) + " " + fmtPm(n.error, self.data.exact) +
          ", " + fmtShare(total ? n.size / total : 0) + " of total, " + fmtCount(n.samples) +
          " samples" + (n.source ? "\n" + n.source : "");
      }
    });
    svg.addEventListener("mousemove", function (ev) {
      var g = ev.target.closest(".mpr-node");
      if (g && g._title) { self.showTip(ev, g._title); } else { self.hideTip(); }
    });
    svg.addEventListener("mouseleave", function () { self.hideTip(); });
    svg.addEventListener("click", function (ev) {
      var g = ev.target.closest(".mpr-node");
      if (!g) { return; }
      if (g._depth === 0 || g === self.zoomed) { self.zoom(null); } else { self.zoom(g); }
    });
    var tools = el("span", "mpr-flame-tools"), search = el("input", "mpr-search");
    search.type = "search";
    search.placeholder = "search functions\u2026";
    tools.appendChild(search);
    tools.appendChild(document.createTextNode(" "));
    tools.appendChild(el("span", "mpr-matches mpr-muted"));
    root.querySelector(".mpr-flame-bar").appendChild(tools);
    search.addEventListener("input", function () { self.search(search.value); });
    this.zoomed = null;
    this.layoutFlame();
    if (window.ResizeObserver) {
      var last = svg.clientWidth;
      new ResizeObserver(function () {
        if (svg.clientWidth !== last) { last = svg.clientWidth; self.layoutFlame(); }
      }).observe(svg);
    }
  };

  Report.prototype.zoom = function (g) {
    this.zoomed = g;
    this.root.querySelector(".mpr-flame-svg").dataset.zoom = g ? g.dataset.i : "";
    this.layoutFlame();
  };

  Report.prototype.layoutFlame = function () {
    var svg = this.root.querySelector(".mpr-flame-svg");
    var width = svg.clientWidth || svg.getBoundingClientRect().width || 960;
    var z = this.zoomed, z0 = z ? z._x0 : 0, z1 = z ? z._x1 : 1, span = z1 - z0;
    this.nodes.forEach(function (g) {
      var x0 = (g._x0 - z0) / span, x1 = (g._x1 - z0) / span;
      // Ancestors of the zoomed box span the full width; boxes outside it disappear.
      var visible = x1 > 1e-9 && x0 < 1 - 1e-9 && (x1 - x0) * width >= 0.5;
      if (z && g._depth < z._depth && !(g._x0 <= z0 && g._x1 >= z1)) { visible = false; }
      g.style.display = visible ? "" : "none";
      if (!visible) { return; }
      x0 = Math.max(0, x0); x1 = Math.min(1, x1);
      var rect = g.querySelector("rect"), text = g.querySelector("text");
      rect.setAttribute("x", (x0 * 100).toFixed(4) + "%");
      rect.setAttribute("width", ((x1 - x0) * 100).toFixed(4) + "%");
      g.classList.toggle("mpr-dim", !!z && g._depth < z._depth);
      if (!text) { return; }
      text.setAttribute("x", (x0 * 100).toFixed(4) + "%");
      var room = (x1 - x0) * width - 8, label = g._label;
      text.textContent = label;
      if (room <= 0) { text.textContent = ""; return; }
      if (text.getComputedTextLength && text.getComputedTextLength() > room) {
        var per = text.getComputedTextLength() / Math.max(1, label.length);
        var n = Math.floor(room / per) - 1;
        text.textContent = n >= 3 ? label.slice(0, n) + "\u2026" : "";
      }
    });
  };

  Report.prototype.search = function (needle) {
    needle = needle.toLowerCase();
    var hits = 0, size = 0, total = this.data.flame.size, counted = [];
    this.nodes.forEach(function (g) {
      var n = g._node, on = !!needle && !!n &&
        ((n.name + " " + n.where + " " + n.source).toLowerCase().indexOf(needle) >= 0);
      g.classList.toggle("mpr-hit", on);
      if (on) {
        hits++;
        // Count a match once, not again under a matching ancestor.
        if (!counted.some(function (a) { return a._depth < g._depth && a._x0 <= g._x0 && a._x1 >= g._x1; })) {
          size += n.size;
        }
        counted.push(g);
      }
    });
    var out = this.root.querySelector(".mpr-matches");
    if (out) {
      out.textContent = needle ? hits + " matching boxes, " + fmtSize(size) + " (" +
        fmtShare(total ? size / total : 0) + " of total)" : "";
    }
  };

  // -- timeline -----------------------------------------------------------------------------
  Report.prototype.initTimeline = function () {
    var self = this, svg = this.root.querySelector(".mpr-timeline-svg");
    var points = this.data.timeline.points, exact = this.data.exact;
    svg.querySelectorAll(".mpr-point").forEach(function (c) {
      var p = points[parseInt(c.dataset.i, 10)];
      if (!p) { return; }
      c._title = p.label + ": " + fmtSize(p.current) + " " + fmtPm(p.error, exact) +
        (p.peak !== null && p.peak !== undefined ? ", peak " + fmtSize(p.peak) : "") +
        (p.text ? "\n" + p.text : "");
    });
    svg.addEventListener("mousemove", function (ev) {
      var c = ev.target.closest(".mpr-point");
      svg.querySelectorAll(".mpr-point.mpr-on").forEach(function (o) { if (o !== c) { o.classList.remove("mpr-on"); } });
      if (c) { c.classList.add("mpr-on"); self.showTip(ev, c._title); } else { self.hideTip(); }
    });
    svg.addEventListener("mouseleave", function () { self.hideTip(); });
  };

  // -- a report standing in for a widget --------------------------------------------------
  // A widget output saved without widget state renders, after a reload with a new kernel,
  // as "Error displaying widget: model not found" (jupyterlab_widgets' WidgetRenderer), and
  // JupyterLab never falls back to another mimetype of the same bundle. A report rendered
  // with data-mpr-replaces='widget' sits next to such an output in the same output area and
  // holds the widget's current view, so it hides that error and says why the controls are
  // gone. It touches only outputs of its own output area, and only ones that show that error.
  var WIDGET_ERROR = /^(Error displaying widget|Model not found for this kernel)/;
  function guardWidget(root) {
    var area = root.closest(".jp-OutputArea, .output_area, .output");
    if (!area) { return; }
    var note = null;
    function check() {
      var hidden = 0;
      area.querySelectorAll(".jupyter-widgets, .jp-OutputArea-output").forEach(function (node) {
        if (node.contains(root) || node.dataset.mprHidden) { return; }
        if (WIDGET_ERROR.test((node.textContent || "").trim())) {
          var child = node.closest(".jp-OutputArea-child") || node;
          child.style.display = "none";
          node.dataset.mprHidden = "1";
          hidden++;
        }
      });
      if (hidden && !note) {
        note = el("div", "mpr-note mpr-widget-note",
          "The live controls of this view need the kernel that made them: run the cell " +
          "again to get them back. The report below is the view as it was last shown.");
        var head = root.querySelector(".mpr-head");
        root.insertBefore(note, head ? head.nextSibling : root.firstChild);
      }
    }
    check();
    if (window.MutationObserver) {
      var observer = new MutationObserver(check);
      observer.observe(area, { childList: true, subtree: true, characterData: true });
      // The widget manager restores (or gives up) within seconds of the page loading.
      setTimeout(function () { observer.disconnect(); }, 120000);
    }
  }

  function init(script) {
    var root = script && script.closest ? script.closest(".mprofile-ir") : null;
    if (!root || root.dataset.ready) { return null; }
    var holder = root.querySelector("script.mpr-data");
    if (!holder) { return null; }
    root.dataset.ready = "1";
    try {
      var report = new Report(root, JSON.parse(holder.textContent));
      root.mprofileReport = report;
      if (root.dataset.mprReplaces === "widget") { guardWidget(root); }
      return report;
    } catch (err) {
      root.dataset.ready = "error";
      if (window.console) { console.warn("mprofile report: static view only:", err); }
      return null;
    }
  }

  window.mprofileReport = {
    version: VERSION,
    init: init,
    // Enhances every report in a page whose script did not run on its own (for hosts that
    // insert HTML without running scripts, then run one script of their own).
    initAll: function (doc) {
      (doc || document).querySelectorAll(".mprofile-ir script.mpr-data").forEach(init);
    },
    format: { size: fmtSize, count: fmtCount, pm: fmtPm, share: fmtShare, time: fmtTime,
              chain: chainText }
  };
})();
