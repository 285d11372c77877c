import { timestampMs } from "@bufbuild/protobuf/wkt";
import { useWindowVirtualizer } from "@tanstack/react-virtual";
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from "react";
import { explain, type Api } from "./api";
import { ExportControl } from "./ExportControl";
import { FilterBar } from "./FilterBar";
import { FilterError, filterFromParams, sortFromParams, withParam } from "./filters";
import { formatCost, formatCount, formatMs, formatProperties, formatScores, formatTime } from "./format";
import type { LogRecord } from "./gen/candela/logs/v1/log_record_pb";
import type { QueryRequestsResponse } from "./gen/candela/query/v1/query_service_pb";
import { RequestDetail } from "./RequestDetail";
import { navigate } from "./route";

const PAGE_SIZE = 50;
const LIVE_INTERVAL_MS = 500;
/** Pages one live poll reads at most; beyond that it starts again from the newest page (see below). */
const LIVE_MAX_PAGES = 10;
/** Rows live mode keeps: the oldest beyond this are dropped, so a busy organization cannot fill the tab. */
export const LIVE_MAX_ROWS = 5000;
/** A row's height before it is measured (px): one line of text and its padding. */
const ROW_HEIGHT = 29;

interface Column {
  id: string;
  title: string;
  sort?: string;
  numeric?: boolean;
  cell: (row: LogRecord, scores: Scores | undefined) => string;
}

/** Each listed request's scores by name, by request id (a request without scores has no entry). */
type Scores = Record<string, number>;
type ScoresById = Record<string, Scores>;

function scoresOf(page: QueryRequestsResponse): ScoresById {
  return Object.fromEntries(Object.entries(page.scores ?? {}).map(([requestId, entry]) => [requestId, entry.scores]));
}

export const COLUMNS: Column[] = [
  { id: "time", title: "Time", sort: "created_at", cell: (row) => formatTime(row.createdAt) },
  { id: "provider", title: "Provider", cell: (row) => row.provider },
  { id: "model", title: "Model", cell: (row) => row.model },
  { id: "status", title: "Status", cell: (row) => String(row.statusCode) },
  { id: "latency", title: "Latency", sort: "latency_ms", numeric: true, cell: (row) => formatMs(row.latencyMs) },
  { id: "ttft", title: "TTFT", sort: "time_to_first_token_ms", numeric: true, cell: (row) => formatMs(row.timeToFirstTokenMs) },
  { id: "tokens", title: "Tokens", sort: "total_tokens", numeric: true, cell: (row) => formatCount(row.usage?.totalTokens ?? 0n) },
  { id: "cost", title: "Cost", sort: "cost_usd", numeric: true, cell: (row) => formatCost(row.costUsd) },
  { id: "scores", title: "Scores", cell: (_row, scores) => formatScores(scores) },
  { id: "user", title: "User", cell: (row) => row.userId },
  { id: "session", title: "Session", cell: (row) => row.sessionName || row.sessionId },
  { id: "prompt", title: "Prompt", cell: (row) => (row.promptId ? `${row.promptId}@${row.promptVersion}` : "") },
  { id: "properties", title: "Properties", cell: (row) => formatProperties(row.properties) },
  { id: "cache", title: "Cache", cell: (row) => (row.cacheHit ? "hit" : "") },
];

/** The organization's requests: filtered and sorted by the URL, a page at a time, live on demand. */
export function RequestsPage({ api, params }: { api: Api; params: URLSearchParams }) {
  const [rows, setRows] = useState<LogRecord[]>([]);
  const [scores, setScores] = useState<ScoresById>({});
  const [cursor, setCursor] = useState<string | undefined>(undefined);
  const [error, setError] = useState("");
  const [loading, setLoading] = useState(true);
  const [hidden, setHidden] = useState<Set<string>>(new Set());
  const selected = params.get("request");
  const live = params.get("live") === "1";
  // The request detail and the live switch do not change which rows are listed.
  const listed = withParam(withParam(params, "request", ""), "live", "").toString();
  const query = useMemo(() => {
    const rowParams = new URLSearchParams(listed);
    try {
      return { filter: filterFromParams(rowParams), sort: sortFromParams(rowParams), problem: "" };
    } catch (failure) {
      if (failure instanceof FilterError) return { filter: {}, sort: {}, problem: failure.message };
      throw failure;
    }
  }, [listed]);

  const load = useCallback(
    async (after?: string) => {
      if (query.problem) {
        setError(query.problem);
        setLoading(false);
        return;
      }
      setLoading(true);
      setError("");
      try {
        const page = await api.query.queryRequests({ ...query, limit: PAGE_SIZE, cursor: after ?? "" });
        setRows((previous) => (after ? [...previous, ...page.requests] : page.requests));
        setScores((previous) => (after ? { ...previous, ...scoresOf(page) } : scoresOf(page)));
        setCursor(page.nextCursor);
      } catch (failure) {
        setError(explain(failure));
      } finally {
        setLoading(false);
      }
    },
    [api, query],
  );

  useEffect(() => {
    void load();
  }, [load]);

  // Live mode: newest first. Twice a second, every row created from the newest one shown on is read, oldest
  // first and page by page, so a burst of requests leaves no gap. A burst beyond LIVE_MAX_PAGES pages
  // starts the list again from the newest page (a gap-free view of the newest rather than a list with a
  // hole), and the list keeps at most LIVE_MAX_ROWS rows (older ones are paged in with live mode off).
  const newest = useRef<LogRecord | undefined>(undefined);
  newest.current = rows[0];
  const sortedByTime = query.sort.field === "created_at" && !query.sort.ascending;
  useEffect(() => {
    if (!live || !sortedByTime || query.problem) return;
    let polling = false;
    const poll = async () => {
      const since = newest.current?.createdAt;
      const conditions = [...(query.filter.conditions ?? [])];
      if (since) {
        // From the newest row's millisecond on (the rows of that millisecond already shown are skipped).
        const from = new Date(timestampMs(since)).toISOString();
        conditions.push({ field: "created_at", operator: "gte", value: { kind: { case: "stringValue", value: from } } });
      }
      const oldestFirst = { field: "created_at", ascending: true };
      const arrived: LogRecord[] = [];
      let arrivedScores: ScoresById = {};
      let after = "";
      for (let page = 0; page < LIVE_MAX_PAGES; page++) {
        const next = await api.query.queryRequests({ filter: { conditions }, sort: oldestFirst, limit: PAGE_SIZE, cursor: after });
        arrived.push(...next.requests);
        arrivedScores = { ...arrivedScores, ...scoresOf(next) };
        if (!next.nextCursor || !since) return { arrived, arrivedScores, overflow: false };
        after = next.nextCursor;
      }
      return { arrived, arrivedScores, overflow: true };
    };
    const timer = window.setInterval(async () => {
      if (polling) return; // a slow answer is not asked again on top of itself
      polling = true;
      try {
        const { arrived, arrivedScores, overflow } = await poll();
        if (overflow) {
          void load();
          return;
        }
        setRows((previous) => {
          const known = new Set(previous.map((row) => row.requestId));
          const fresh = arrived.filter((row) => !known.has(row.requestId)).reverse();
          if (!fresh.length) return previous;
          const next = [...fresh, ...previous];
          if (next.length <= LIVE_MAX_ROWS) return next;
          setCursor(undefined);
          return next.slice(0, LIVE_MAX_ROWS);
        });
        setScores((previous) => ({ ...previous, ...arrivedScores }));
      } catch (failure) {
        setError(explain(failure));
      } finally {
        polling = false;
      }
    }, LIVE_INTERVAL_MS);
    return () => window.clearInterval(timer);
  }, [api, live, sortedByTime, query, load]);

  // Only the rows in and near the viewport are in the page: thousands of rows scroll as smoothly as fifty.
  const body = useRef<HTMLTableSectionElement>(null);
  const [bodyTop, setBodyTop] = useState(0);
  useLayoutEffect(() => {
    if (body.current) setBodyTop(body.current.getBoundingClientRect().top + window.scrollY);
  });
  const virtualizer = useWindowVirtualizer({ count: rows.length, estimateSize: () => ROW_HEIGHT, overscan: 10, scrollMargin: bodyTop });
  const items = virtualizer.getVirtualItems();
  const above = items.length ? items[0].start - bodyTop : 0;
  const below = items.length ? virtualizer.getTotalSize() - (items[items.length - 1].end - bodyTop) : 0;
  // Near the end of what is loaded, the next page comes in by itself (the button stays for keyboards).
  const lastShown = items.length ? items[items.length - 1].index : -1;
  useEffect(() => {
    if (cursor && !loading && !live && lastShown >= rows.length - 5) void load(cursor);
  }, [cursor, loading, live, lastShown, rows.length, load]);
  const focusRow = (index: number) => {
    if (index < 0 || index >= rows.length) return;
    virtualizer.scrollToIndex(index, { align: "auto" });
    requestAnimationFrame(() => body.current?.querySelector<HTMLElement>(`tr[data-index="${index}"]`)?.focus());
  };

  const shown = COLUMNS.filter((column) => !hidden.has(column.id));
  const go = (next: URLSearchParams) => navigate("requests", next);
  const sortBy = (field: string) => {
    const current = sortFromParams(params);
    const value = current.field === field && !current.ascending ? `+${field}` : `-${field}`;
    go(withParam(params, "sort", value === "-created_at" ? "" : value));
  };

  return (
    <section className="requests">
      <div className="toolbar">
        <h2>Requests</h2>
        <button type="button" className="quiet" onClick={() => void load()} disabled={loading}>
          Refresh
        </button>
        <label className="switch" title={sortedByTime ? "" : "Live mode needs the newest-first order"}>
          <input
            type="checkbox"
            checked={live}
            disabled={!sortedByTime}
            onChange={(event) => go(withParam(params, "live", event.target.checked ? "1" : ""))}
          />
          Live
        </label>
        <ExportControl api={api} filter={query.filter} sort={query.sort} disabled={Boolean(query.problem)} />
        <details className="chooser">
          <summary>Columns</summary>
          {COLUMNS.map((column) => (
            <label key={column.id}>
              <input
                type="checkbox"
                checked={!hidden.has(column.id)}
                onChange={() =>
                  setHidden((previous) => {
                    const next = new Set(previous);
                    if (next.has(column.id)) next.delete(column.id);
                    else next.add(column.id);
                    return next;
                  })
                }
              />
              {column.title}
            </label>
          ))}
        </details>
      </div>
      <FilterBar params={params} onApply={go} />
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {!error && !loading && rows.length === 0 && (
        <p className="empty">
          {params.toString()
            ? "No request matches these filters. Widen them, or clear them to see every request."
            : "No requests yet. Point an OpenAI or Anthropic SDK at this gateway with a Candela key, and each call appears here."}
        </p>
      )}
      {rows.length > 0 && (
        <div className="table-wrap">
          <table className="grid" data-loaded={rows.length}>
            <thead>
              <tr>
                {shown.map((column) => (
                  <th key={column.id} className={column.numeric ? "number" : ""}>
                    {column.sort ? (
                      <button type="button" className="link" onClick={() => sortBy(column.sort!)}>
                        {column.title}
                        {query.sort.field === column.sort ? (query.sort.ascending ? " ▲" : " ▼") : ""}
                      </button>
                    ) : (
                      column.title
                    )}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody ref={body}>
              {above > 0 && <tr className="spacer" aria-hidden="true" style={{ height: above }} />}
              {items.map((item) => {
                const row = rows[item.index];
                return (
                  <tr
                    key={row.requestId}
                    ref={virtualizer.measureElement}
                    data-index={item.index}
                    data-request-id={row.requestId}
                    tabIndex={0}
                    className={row.statusCode >= 400 || row.error ? "failed" : ""}
                    onClick={() => go(withParam(params, "request", row.requestId))}
                    onKeyDown={(event) => {
                      if (event.key === "Enter") go(withParam(params, "request", row.requestId));
                      const step = event.key === "ArrowDown" || event.key === "j" ? 1 : event.key === "ArrowUp" || event.key === "k" ? -1 : 0;
                      if (step) {
                        event.preventDefault();
                        focusRow(item.index + step);
                      }
                    }}
                  >
                    {shown.map((column) => {
                      const value = column.cell(row, scores[row.requestId]);
                      return (
                        <td key={column.id} className={column.numeric ? "number" : "clip"} title={value}>
                          {value}
                        </td>
                      );
                    })}
                  </tr>
                );
              })}
              {below > 0 && <tr className="spacer" aria-hidden="true" style={{ height: below }} />}
            </tbody>
          </table>
        </div>
      )}
      {cursor && (
        <button type="button" onClick={() => void load(cursor)} disabled={loading}>
          {loading ? "Loading..." : "Load more"}
        </button>
      )}
      {live && rows.length >= LIVE_MAX_ROWS && (
        <p className="muted">Live mode keeps the newest {LIVE_MAX_ROWS.toLocaleString()} requests; turn it off to page through older ones.</p>
      )}
      {selected && (
        <RequestDetail
          api={api}
          requestId={selected}
          onClose={() => go(withParam(params, "request", ""))}
          onScores={(requestId, latest) => setScores((previous) => ({ ...previous, [requestId]: latest }))}
        />
      )}
    </section>
  );
}
