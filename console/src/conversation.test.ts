import { describe, expect, it } from "vitest";
import { requestTurns, responseTurns } from "./conversation";

describe("requestTurns", () => {
  it("reads OpenAI chat messages with an image and a tool result", () => {
    const body = JSON.stringify({
      messages: [
        { role: "system", content: "Be brief." },
        { role: "user", content: [{ type: "text", text: "What is this?" }, { type: "image_url", image_url: { url: "data:image/png;base64,AAAA" } }] },
        { role: "assistant", content: null, tool_calls: [{ id: "call_1", type: "function", function: { name: "lookup", arguments: '{"q":"cat"}' } }] },
        { role: "tool", tool_call_id: "call_1", content: "a cat" },
      ],
    });
    expect(requestTurns(body)).toEqual([
      { role: "system", parts: [{ kind: "text", text: "Be brief." }] },
      { role: "user", parts: [{ kind: "text", text: "What is this?" }, { kind: "image", url: "data:image/png;base64,AAAA" }] },
      { role: "assistant", parts: [{ kind: "tool_call", name: "lookup", id: "call_1", input: '{\n  "q": "cat"\n}' }] },
      { role: "tool", parts: [{ kind: "tool_result", id: "call_1", text: "a cat" }] },
    ]);
  });

  it("reads Anthropic blocks and never turns a javascript: URL into an image", () => {
    const body = JSON.stringify({
      system: "Be kind.",
      messages: [
        { role: "user", content: [{ type: "image", source: { type: "url", url: "javascript:alert(1)" } }] },
        { role: "user", content: [{ type: "tool_result", tool_use_id: "tu_1", content: [{ type: "text", text: "42" }] }] },
      ],
    });
    expect(requestTurns(body)).toEqual([
      { role: "system", parts: [{ kind: "text", text: "Be kind." }] },
      { role: "user", parts: [{ kind: "text", text: "javascript:alert(1)" }] },
      { role: "user", parts: [{ kind: "tool_result", id: "tu_1", text: "42" }] },
    ]);
  });

  it("reads a Responses API input and gives nothing for a body that is not JSON", () => {
    expect(requestTurns(JSON.stringify({ instructions: "Sys", input: "Hi" }))).toEqual([
      { role: "system", parts: [{ kind: "text", text: "Sys" }] },
      { role: "user", parts: [{ kind: "text", text: "Hi" }] },
    ]);
    expect(requestTurns("<html>")).toEqual([]);
  });
});

describe("responseTurns", () => {
  it("joins an OpenAI stream with CRLF line endings back into its text and tool call", () => {
    const events = [
      { choices: [{ index: 0, delta: { role: "assistant", content: "Hel" } }] },
      { choices: [{ index: 0, delta: { content: "lo" } }] },
      { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, id: "c1", function: { name: "f", arguments: '{"a"' } }] } }] },
      { choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: ":1}" } }] } }] },
    ];
    const body = events.map((event) => `data: ${JSON.stringify(event)}\r\n\r\n`).join("") + "data: [DONE]\r\n\r\n";
    expect(responseTurns(body)).toEqual([
      { role: "assistant", parts: [{ kind: "text", text: "Hello" }, { kind: "tool_call", name: "f", id: "c1", input: '{\n  "a": 1\n}' }] },
    ]);
  });

  it("joins an Anthropic stream and reads an Anthropic message", () => {
    const stream = [
      "event: content_block_delta",
      'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi "}}',
      'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"there"}}',
    ].join("\n");
    expect(responseTurns(stream)).toEqual([{ role: "assistant", parts: [{ kind: "text", text: "Hi there" }] }]);
    const message = JSON.stringify({ type: "message", role: "assistant", content: [{ type: "tool_use", id: "t", name: "g", input: { x: 1 } }] });
    expect(responseTurns(message)).toEqual([{ role: "assistant", parts: [{ kind: "tool_call", name: "g", id: "t", input: '{\n  "x": 1\n}' }] }]);
  });
});
