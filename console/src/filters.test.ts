import { describe, expect, it } from "vitest";
import { FilterError, filterFromParams, sortFromParams } from "./filters";

const params = (query: string) => new URLSearchParams(query);

describe("filterFromParams", () => {
  it("turns each URL parameter into one condition of the query API", () => {
    const filter = filterFromParams(params("model=gpt-4o&user=alice&status=errors&cost_min=0.01&latency_max=500&cached=true"));
    expect(filter.conditions).toEqual([
      { field: "model", operator: "equals", value: { kind: { case: "stringValue", value: "gpt-4o" } } },
      { field: "user_id", operator: "equals", value: { kind: { case: "stringValue", value: "alice" } } },
      { field: "status_code", operator: "gte", value: { kind: { case: "numberValue", value: 400 } } },
      { field: "cost_usd", operator: "gte", value: { kind: { case: "stringValue", value: "0.01" } } },
      { field: "latency_ms", operator: "lte", value: { kind: { case: "numberValue", value: 500 } } },
      { field: "cache_hit", operator: "equals", value: { kind: { case: "boolValue", value: true } } },
    ]);
  });

  it("matches property names without regard to case", () => {
    expect(filterFromParams(params("prop.Feature=search")).conditions).toEqual([
      { field: "property", propertyKey: "feature", operator: "equals", value: { kind: { case: "stringValue", value: "search" } } },
    ]);
  });

  it("finds the requests of one trace by its id", () => {
    expect(filterFromParams(params("trace=4bf92f3577b34da6a3ce929d0e0e4736")).conditions).toEqual([
      { field: "trace_id", operator: "equals", value: { kind: { case: "stringValue", value: "4bf92f3577b34da6a3ce929d0e0e4736" } } },
    ]);
  });

  it("keeps cost exact: a decimal string, never a float", () => {
    const [condition] = filterFromParams(params("cost_max=0.000000000001")).conditions ?? [];
    expect(condition.value).toEqual({ kind: { case: "stringValue", value: "0.000000000001" } });
  });

  it("names the parameter a person got wrong", () => {
    expect(() => filterFromParams(params("status=teapot"))).toThrow(FilterError);
    expect(() => filterFromParams(params("cost_min=cheap"))).toThrow(/cost_min/);
    expect(() => filterFromParams(params("from=yesterday-ish"))).toThrow(/from/);
  });
});

describe("sortFromParams", () => {
  it("defaults to newest first and ignores a field the API cannot sort by", () => {
    expect(sortFromParams(params(""))).toEqual({ field: "created_at", ascending: false });
    expect(sortFromParams(params("sort=user_id"))).toEqual({ field: "created_at", ascending: false });
    expect(sortFromParams(params("sort=%2Bcost_usd"))).toEqual({ field: "cost_usd", ascending: true });
    expect(sortFromParams(params("sort=-latency_ms"))).toEqual({ field: "latency_ms", ascending: false });
  });
});
