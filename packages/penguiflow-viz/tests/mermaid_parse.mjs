// Parses Mermaid texts with the real `mermaid` package (headless, DOM from jsdom).
//
// stdin:  a JSON array of diagram texts.
// stdout: a JSON array, one entry per text:
//   {"ok": true, "type": "flowchart-v2", "vertices": [{id, text, classes, type}],
//    "edges": [{start, end, text}], "classDefs": [names]}
//   {"ok": false, "error": "..."}
// The pytest fixture copies this file next to the node_modules it installs.
import { readFileSync } from "node:fs";
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;

const mermaid = (await import("mermaid")).default;
mermaid.initialize({ startOnLoad: false, securityLevel: "strict" });

const values = (m) => [...(m instanceof Map ? m.values() : Object.values(m))];
const texts = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const text of texts) {
  try {
    // mermaid.parse is the public validity check; the diagram object gives the model.
    const parsed = await mermaid.parse(text);
    const diagram = await mermaid.mermaidAPI.getDiagramFromText(text);
    const db = diagram.db;
    results.push({
      ok: true,
      type: parsed.diagramType,
      vertices: values(db.getVertices()).map((v) => ({
        id: v.id, text: v.text, classes: v.classes, type: v.type,
      })),
      edges: db.getEdges().map((e) => ({ start: e.start, end: e.end, text: e.text })),
      classDefs: values(db.getClasses()).map((c) => c.id),
    });
  } catch (err) {
    results.push({ ok: false, error: String((err && err.message) || err) });
  }
}
process.stdout.write(JSON.stringify(results));
