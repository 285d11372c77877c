// The requests table's live mode against an API answering as the query service does: a burst of requests
// between two polls is read page by page, so none is missing from the list.
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { cleanup, render, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import type { Api } from "./api";
import { LogRecordSchema, type LogRecord } from "./gen/candela/logs/v1/log_record_pb";
import { RequestsPage } from "./RequestsPage";

afterEach(cleanup);

const record = (index: number): LogRecord =>
  create(LogRecordSchema, { requestId: `request-${index}`, createdAt: timestampFromMs(1_700_000_000_000 + index), model: "gpt-4o-mini" });

/** A query API over `stored` (ascending by time): pages of `limit`, sorted either way, from a time on. */
function apiOver(stored: LogRecord[]): { api: Api; calls: number[] } {
  const calls: number[] = [];
  const queryRequests = async (request: {
    filter?: { conditions?: { field: string; value: { kind: { value: string } } }[] };
    sort?: { ascending?: boolean };
    limit: number;
    cursor?: string;
  }) => {
    const from = request.filter?.conditions?.find((condition) => condition.field === "created_at")?.value.kind.value;
    let rows = stored.filter((row) => !from || row.createdAt!.seconds * 1000n + BigInt(row.createdAt!.nanos / 1e6) >= BigInt(Date.parse(from)));
    if (!request.sort?.ascending) rows = [...rows].reverse();
    const start = Number(request.cursor || 0);
    calls.push(start);
    const page = rows.slice(start, start + request.limit);
    return { requests: page, nextCursor: start + request.limit < rows.length ? String(start + request.limit) : undefined, scores: {} };
  };
  return { api: { query: { queryRequests } } as unknown as Api, calls };
}

describe("RequestsPage live mode", () => {
  it("lists every request of a burst larger than a page, newest first", async () => {
    const stored = [0, 1, 2].map(record);
    const { api } = apiOver(stored);
    const { container } = render(<RequestsPage api={api} params={new URLSearchParams("live=1")} />);
    await waitFor(() => expect(container.querySelector("table")?.dataset.loaded).toBe("3"));
    stored.push(...Array.from({ length: 120 }, (_, index) => record(3 + index)));
    await waitFor(() => expect(container.querySelector("table")?.dataset.loaded).toBe("123"), { timeout: 4000 });
    // Every row is where newest-first puts it (the page draws only some of them: check those it draws).
    const drawn = [...container.querySelectorAll("tbody tr[data-request-id]")];
    expect(drawn.length).toBeGreaterThan(0);
    for (const row of drawn) expect(row.getAttribute("data-request-id")).toBe(`request-${122 - Number(row.getAttribute("data-index"))}`);
  });
});
