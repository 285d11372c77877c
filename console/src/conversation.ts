// A logged call as a person reads it: the messages of the request and the answer, from the JSON each
// provider API speaks (OpenAI chat completions and Responses, Anthropic messages), a streamed answer
// (server-sent events) joined back into its text. Everything here is data; the page renders it as text
// nodes only. Anything not understood is left to the raw JSON view.

export type Part =
  | { kind: "text"; text: string }
  | { kind: "image"; url: string }
  | { kind: "tool_call"; name: string; id: string; input: string }
  | { kind: "tool_result"; id: string; text: string };

export interface Turn {
  role: string;
  parts: Part[];
}

type Json = Record<string, unknown>;

const isObject = (value: unknown): value is Json => typeof value === "object" && value !== null && !Array.isArray(value);
const text = (value: unknown): string => (typeof value === "string" ? value : value === undefined ? "" : JSON.stringify(value));

/** Only data and http(s) image URLs become thumbnails; anything else (javascript:, ...) stays text. */
function image(url: unknown): Part {
  const value = text(url);
  return /^(https?:|data:image\/)/i.test(value) ? { kind: "image", url: value } : { kind: "text", text: value };
}

function partsOf(content: unknown): Part[] {
  if (typeof content === "string") return content ? [{ kind: "text", text: content }] : [];
  if (!Array.isArray(content)) return content === undefined || content === null ? [] : [{ kind: "text", text: text(content) }];
  const parts: Part[] = [];
  for (const block of content) {
    if (!isObject(block)) continue;
    switch (block.type) {
      case "text":
      case "input_text":
      case "output_text":
        parts.push({ kind: "text", text: text(block.text) });
        break;
      case "image_url":
        parts.push(image(isObject(block.image_url) ? block.image_url.url : block.image_url));
        break;
      case "input_image":
        parts.push(image(block.image_url));
        break;
      case "image": {
        const source = isObject(block.source) ? block.source : {};
        parts.push(source.type === "base64" ? image(`data:${text(source.media_type)};base64,${text(source.data)}`) : image(source.url));
        break;
      }
      case "tool_use":
        parts.push({ kind: "tool_call", name: text(block.name), id: text(block.id), input: JSON.stringify(block.input ?? {}, null, 2) });
        break;
      case "tool_result":
        parts.push({ kind: "tool_result", id: text(block.tool_use_id), text: partsOf(block.content).map(plain).join("\n") });
        break;
      case "thinking":
        parts.push({ kind: "text", text: `(thinking) ${text(block.thinking)}` });
        break;
      default:
        parts.push({ kind: "text", text: JSON.stringify(block) });
    }
  }
  return parts;
}

function plain(part: Part): string {
  return part.kind === "text" ? part.text : part.kind === "image" ? `[image ${part.url.slice(0, 40)}]` : JSON.stringify(part);
}

function chatMessage(message: Json): Turn {
  const parts = partsOf(message.content);
  for (const call of Array.isArray(message.tool_calls) ? message.tool_calls : []) {
    if (!isObject(call)) continue;
    const fn = isObject(call.function) ? call.function : {};
    parts.push({ kind: "tool_call", name: text(fn.name), id: text(call.id), input: prettyJson(text(fn.arguments)) });
  }
  if (message.role === "tool") return { role: "tool", parts: [{ kind: "tool_result", id: text(message.tool_call_id), text: parts.map(plain).join("\n") }] };
  return { role: text(message.role) || "assistant", parts };
}

function responsesItem(item: Json): Turn | null {
  switch (item.type) {
    case "message":
    case undefined:
      return { role: text(item.role) || "assistant", parts: partsOf(item.content) };
    case "function_call":
      return { role: "assistant", parts: [{ kind: "tool_call", name: text(item.name), id: text(item.call_id), input: prettyJson(text(item.arguments)) }] };
    case "function_call_output":
      return { role: "tool", parts: [{ kind: "tool_result", id: text(item.call_id), text: text(item.output) }] };
    case "reasoning":
      return null;
    default:
      return { role: "assistant", parts: [{ kind: "text", text: JSON.stringify(item) }] };
  }
}

function prettyJson(raw: string): string {
  try {
    return JSON.stringify(JSON.parse(raw), null, 2);
  } catch {
    return raw;
  }
}

function parse(body: string): unknown {
  try {
    return JSON.parse(body);
  } catch {
    return undefined;
  }
}

/** The request's messages: system prompt first, in the order sent. */
export function requestTurns(body: string): Turn[] {
  const request = parse(body);
  if (!isObject(request)) return [];
  const turns: Turn[] = [];
  if (request.system !== undefined) turns.push({ role: "system", parts: partsOf(request.system) });
  if (typeof request.instructions === "string") turns.push({ role: "system", parts: partsOf(request.instructions) });
  if (Array.isArray(request.messages)) for (const message of request.messages) if (isObject(message)) turns.push(chatMessage(message));
  if (typeof request.input === "string") turns.push({ role: "user", parts: partsOf(request.input) });
  else if (Array.isArray(request.input))
    for (const item of request.input) {
      const turn = isObject(item) ? responsesItem(item) : null;
      if (turn) turns.push(turn);
    }
  if (typeof request.prompt === "string") turns.push({ role: "user", parts: partsOf(request.prompt) });
  return turns;
}

/** The answer's messages, from a JSON response or a stream of server-sent events. */
export function responseTurns(body: string): Turn[] {
  const response = parse(body);
  if (isObject(response)) {
    if (Array.isArray(response.choices))
      return response.choices.filter(isObject).map((choice) => (isObject(choice.message) ? chatMessage(choice.message) : { role: "assistant", parts: partsOf(choice.text) }));
    if (response.type === "message") return [{ role: text(response.role) || "assistant", parts: partsOf(response.content) }];
    if (Array.isArray(response.output)) return response.output.filter(isObject).map(responsesItem).filter((turn): turn is Turn => turn !== null);
    return [];
  }
  return streamedTurns(body);
}

/** A streamed answer joined back: OpenAI chat chunks, Responses events or Anthropic events. */
export function streamedTurns(body: string): Turn[] {
  let answer = "";
  const calls = new Map<string, { name: string; id: string; input: string }>();
  for (const line of body.split(/\r\n|\r|\n/)) {
    if (!line.startsWith("data:")) continue;
    const event = parse(line.slice(5).trim());
    if (!isObject(event)) continue;
    if (Array.isArray(event.choices)) {
      for (const choice of event.choices) {
        const delta = isObject(choice) && isObject(choice.delta) ? choice.delta : {};
        if (typeof delta.content === "string") answer += delta.content;
        for (const call of Array.isArray(delta.tool_calls) ? delta.tool_calls : []) {
          if (!isObject(call)) continue;
          const key = String(call.index ?? 0);
          const known = calls.get(key) ?? { name: "", id: "", input: "" };
          const fn = isObject(call.function) ? call.function : {};
          calls.set(key, { name: known.name + text(fn.name), id: known.id || text(call.id), input: known.input + text(fn.arguments) });
        }
      }
    } else if (event.type === "content_block_delta" && isObject(event.delta)) {
      if (event.delta.type === "text_delta") answer += text(event.delta.text);
      if (event.delta.type === "input_json_delta") {
        const key = String(event.index);
        const known = calls.get(key);
        if (known) known.input += text(event.delta.partial_json);
      }
    } else if (event.type === "content_block_start" && isObject(event.content_block) && event.content_block.type === "tool_use") {
      calls.set(String(event.index), { name: text(event.content_block.name), id: text(event.content_block.id), input: "" });
    } else if (event.type === "response.output_text.delta") {
      answer += text(event.delta);
    }
  }
  const parts: Part[] = answer ? [{ kind: "text", text: answer }] : [];
  for (const call of calls.values()) parts.push({ kind: "tool_call", ...call, input: prettyJson(call.input) });
  return parts.length ? [{ role: "assistant", parts }] : [];
}
