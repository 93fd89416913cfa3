// Renders /api/v1/openapi.json: operations, parameters, request bodies, responses and schemas.
// Everything is written with textContent, so nothing in the document can become markup.
"use strict";

// The descriptions' Markdown, the subset this document uses: paragraphs, "- " lists, `code`, **bold**,
// *emphasis* and [links](...). Each piece becomes a DOM node built here, its text a text node: the source
// is never parsed as HTML, so a description cannot inject markup whatever it holds. A link keeps only an
// http(s) URL, a path on this origin or a #fragment; anything else stays text.
const INLINE = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|\[([^\]]+)\]\(([^()\s]+)\)/g;

function safeHref(url) {
  return /^(https?:\/\/|\/(?![\/\\])|#)/i.test(url) ? url : null;
}

function inline(text) {
  const nodes = [];
  let at = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > at) nodes.push(text.slice(at, match.index));
    const [whole, code, strong, emphasis, label, url] = match;
    if (code !== undefined) nodes.push(el("code", {}, code));
    else if (strong !== undefined) nodes.push(el("strong", {}, ...inline(strong)));
    else if (emphasis !== undefined) nodes.push(el("em", {}, ...inline(emphasis)));
    else if (safeHref(url)) nodes.push(el("a", { href: safeHref(url) }, ...inline(label)));
    else nodes.push(whole);
    at = match.index + whole.length;
  }
  if (at < text.length) nodes.push(text.slice(at));
  return nodes;
}

function markdown(source) {
  const block = el("div", { class: "md" });
  for (const paragraph of String(source || "").split(/\n\s*\n/)) {
    const lines = paragraph.split("\n").filter((line) => line.trim() !== "");
    if (lines.length === 0) continue;
    if (lines.every((line) => /^\s*[-*] /.test(line))) {
      const list = el("ul", {});
      for (const line of lines) list.append(el("li", {}, ...inline(line.replace(/^\s*[-*] /, ""))));
      block.append(list);
    } else {
      block.append(el("p", {}, ...inline(lines.join(" "))));
    }
  }
  return block;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function refName(schema) {
  return schema && schema.$ref ? schema.$ref.split("/").pop() : null;
}

function schemaBlock(schema) {
  const name = refName(schema);
  if (name) return el("p", {}, "schema: ", el("a", { href: "#schema-" + name }, name));
  return el("pre", {}, JSON.stringify(schema, null, 2));
}

function resolve(doc, item) {
  const name = refName(item);
  return name ? doc.components.responses[name] : item;
}

function contentTable(content) {
  const table = el("table", {});
  for (const [mediaType, media] of Object.entries(content || {})) {
    const cell = el("td", {}, schemaBlock(media.schema || {}));
    if (media.example !== undefined) cell.append(el("pre", {}, "example: " + JSON.stringify(media.example)));
    table.append(el("tr", {}, el("th", {}, el("code", {}, mediaType)), cell));
  }
  return table;
}

function operation(doc, path, method, op) {
  const secured = (op.security || doc.security || []).length > 0;
  const section = el("section", { class: "op", id: op.operationId || path },
    el("span", { class: "auth" }, secured ? "key, when keys are configured" : "open"),
    el("span", { class: "method " + method }, method),
    el("span", { class: "path" }, path),
    el("p", {}, el("strong", {}, op.summary || "")));
  if (op.description) section.append(markdown(op.description));
  if (op.parameters && op.parameters.length) {
    section.append(el("h4", {}, "Parameters"));
    const table = el("table", {});
    for (const p of op.parameters) {
      table.append(el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
        el("td", {}, p.required ? "required" : "optional"), el("td", {}, markdown(p.description))));
    }
    section.append(table);
  }
  if (op.requestBody) {
    section.append(el("h4", {}, "Request body"), contentTable(op.requestBody.content));
  }
  section.append(el("h4", {}, "Responses"));
  const responses = el("table", {});
  for (const [status, raw] of Object.entries(op.responses || {})) {
    const response = resolve(doc, raw);
    const cell = el("td", {}, markdown(response.description));
    for (const [header, spec] of Object.entries(response.headers || {})) {
      cell.append(el("p", {}, "header ", el("code", {}, header), ...(spec.description ? [": ", ...inline(spec.description)] : [])));
    }
    cell.append(contentTable(response.content));
    responses.append(el("tr", {}, el("th", {}, status), cell));
  }
  section.append(responses);
  return section;
}

function render(doc) {
  const root = document.getElementById("doc");
  root.textContent = "";
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  root.append(markdown(doc.info.description));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) root.append(operation(doc, path, method, op));
  }
  root.append(el("h2", {}, "Security schemes"), el("pre", {},
    JSON.stringify(doc.components.securitySchemes, null, 2)));
  root.append(el("h2", {}, "Schemas"));
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    root.append(el("h3", { id: "schema-" + name }, name), el("pre", {}, JSON.stringify(schema, null, 2)));
  }
}

fetch("openapi.json")
  .then((response) => response.json())
  .then(render)
  .catch(() => { document.getElementById("doc").textContent = "The document could not be loaded."; });
