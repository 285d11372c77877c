// A view of the requests lives in the URL (after the `#`), so it can be shared: readable parameters such
// as `model=gpt-4o&prop.feature=search&cost_min=0.01&sort=cost_usd`. This module turns them into the
// query API's filter tree and back. Property names match without regard to case (header names are
// case-insensitive and are stored lower-cased).
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { FilterConditionSchema, RequestFilterSchema, RequestSortSchema } from "./gen/candela/query/v1/query_service_pb";

type Condition = MessageInitShape<typeof FilterConditionSchema>;

/** Text fields matched exactly, by URL parameter. */
export const TEXT_FIELDS: Record<string, string> = {
  model: "model",
  provider: "provider",
  user: "user_id",
  session: "session_id",
  prompt: "prompt_id",
  version: "prompt_version",
  trace: "trace_id",
};

/** Range fields: `<name>_min` / `<name>_max` in the URL, inclusive. Cost is an exact decimal string. */
export const RANGE_FIELDS: Record<string, string> = {
  cost: "cost_usd",
  latency: "latency_ms",
  ttft: "time_to_first_token_ms",
  tokens: "total_tokens",
};

export const SORTABLE = ["created_at", "latency_ms", "time_to_first_token_ms", "total_tokens", "cost_usd"] as const;

const PROPERTY_PREFIX = "prop.";
/** `score.<name>=<min>..<max>` (either side may be empty) or `score.<name>=<value>`. */
export const SCORE_PREFIX = "score.";
const SCORE_RANGE = /^(-?\d+(?:\.\d+)?)?(?:\.\.(-?\d+(?:\.\d+)?)?)?$/;

function text(value: string): Condition["value"] {
  return { kind: { case: "stringValue", value } };
}

function number(value: number): Condition["value"] {
  return { kind: { case: "numberValue", value } };
}

/** A parse problem a person can fix, named after the URL parameter. */
export class FilterError extends Error {}

export function filterFromParams(params: URLSearchParams): MessageInitShape<typeof RequestFilterSchema> {
  const conditions: Condition[] = [];
  for (const [param, field] of Object.entries(TEXT_FIELDS)) {
    const value = params.get(param);
    if (value) conditions.push({ field, operator: "equals", value: text(value) });
  }
  const status = params.get("status");
  if (status) {
    if (status === "errors") conditions.push({ field: "status_code", operator: "gte", value: number(400) });
    else if (/^\d{3}$/.test(status)) conditions.push({ field: "status_code", operator: "equals", value: number(+status) });
    else throw new FilterError(`status must be a 3-digit code or "errors", not ${JSON.stringify(status)}`);
  }
  for (const [param, field] of Object.entries(RANGE_FIELDS)) {
    for (const [suffix, operator] of [
      ["_min", "gte"],
      ["_max", "lte"],
    ] as const) {
      const raw = params.get(param + suffix);
      if (!raw) continue;
      if (!/^\d+(\.\d+)?$/.test(raw)) throw new FilterError(`${param + suffix} must be a number, not ${JSON.stringify(raw)}`);
      conditions.push({ field, operator, value: field === "cost_usd" ? text(raw) : number(+raw) });
    }
  }
  for (const [param, operator] of [
    ["from", "gte"],
    ["to", "lt"],
  ] as const) {
    const raw = params.get(param);
    if (!raw) continue;
    const at = new Date(raw);
    if (Number.isNaN(at.getTime())) throw new FilterError(`${param} must be a date and time, not ${JSON.stringify(raw)}`);
    conditions.push({ field: "created_at", operator, value: text(at.toISOString()) });
  }
  const cached = params.get("cached");
  if (cached === "true" || cached === "false") {
    conditions.push({ field: "cache_hit", operator: "equals", value: { kind: { case: "boolValue", value: cached === "true" } } });
  }
  for (const [param, value] of params) {
    if (param.startsWith(PROPERTY_PREFIX) && param.length > PROPERTY_PREFIX.length) {
      const key = param.slice(PROPERTY_PREFIX.length).toLowerCase();
      conditions.push({ field: "property", propertyKey: key, operator: "equals", value: text(value) });
    }
    if (param.startsWith(SCORE_PREFIX) && param.length > SCORE_PREFIX.length) {
      conditions.push(...scoreConditions(param.slice(SCORE_PREFIX.length), value));
    }
  }
  const feedback = params.get("feedback");
  if (feedback) {
    if (feedback !== "up" && feedback !== "down") throw new FilterError(`feedback must be "up" or "down", not ${JSON.stringify(feedback)}`);
    conditions.push({ field: "feedback", operator: "equals", value: { kind: { case: "boolValue", value: feedback === "up" } } });
  }
  return { conditions };
}

/** The conditions of `score.<name>=<min>..<max>`: inclusive bounds, or one exact value without `..`. */
function scoreConditions(name: string, raw: string): Condition[] {
  const match = SCORE_RANGE.exec(raw.trim());
  if (!raw.trim() || !match) {
    throw new FilterError(`score.${name} must be a number or a range such as 0.5..1, not ${JSON.stringify(raw)}`);
  }
  const [, low, high] = match;
  if (!raw.includes("..")) return [{ field: "score", propertyKey: name, operator: "equals", value: number(+raw) }];
  const bounds: Condition[] = [];
  if (low !== undefined) bounds.push({ field: "score", propertyKey: name, operator: "gte", value: number(+low) });
  if (high !== undefined) bounds.push({ field: "score", propertyKey: name, operator: "lte", value: number(+high) });
  if (!bounds.length) throw new FilterError(`score.${name} needs a bound, e.g. 0.5.. or ..0.2`);
  return bounds;
}

export function sortFromParams(params: URLSearchParams): MessageInitShape<typeof RequestSortSchema> {
  const raw = params.get("sort") ?? "";
  const ascending = raw.startsWith("+");
  const field = raw.replace(/^[+-]/, "");
  return (SORTABLE as readonly string[]).includes(field) ? { field, ascending } : { field: "created_at", ascending: false };
}

/** The URL parameters with `name` set to `value` (removed when empty), others kept as they were. */
export function withParam(params: URLSearchParams, name: string, value: string): URLSearchParams {
  const next = new URLSearchParams(params);
  if (value) next.set(name, value);
  else next.delete(name);
  return next;
}
