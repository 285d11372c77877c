import { useCallback, useEffect, useState } from "react";
import { explain, type Api } from "./api";
import { formatCost, formatCount, formatMs, formatProperties, formatTime } from "./format";
import type { LogRecord } from "./gen/candela/logs/v1/log_record_pb";
import { RequestDetail } from "./RequestDetail";

const PAGE_SIZE = 50;

/** The organization's requests, newest first, a page at a time (the query API's cursor). */
export function RequestsPage({ api }: { api: Api }) {
  const [rows, setRows] = useState<LogRecord[]>([]);
  const [cursor, setCursor] = useState<string | undefined>(undefined);
  const [error, setError] = useState("");
  const [loading, setLoading] = useState(true);
  const [selected, setSelected] = useState<string | null>(null);

  const load = useCallback(
    async (after?: string) => {
      setLoading(true);
      setError("");
      try {
        const page = await api.query.queryRequests({ limit: PAGE_SIZE, cursor: after ?? "" });
        setRows((previous) => (after ? [...previous, ...page.requests] : page.requests));
        setCursor(page.nextCursor);
      } catch (failure) {
        setError(explain(failure));
      } finally {
        setLoading(false);
      }
    },
    [api],
  );

  useEffect(() => {
    void load();
  }, [load]);

  return (
    <section className="requests">
      <div className="toolbar">
        <h2>Requests</h2>
        <button type="button" className="quiet" onClick={() => void load()} disabled={loading}>
          Refresh
        </button>
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {!error && !loading && rows.length === 0 && (
        <p className="empty">
          No requests yet. Point an OpenAI or Anthropic SDK at this gateway with a Candela key, and each call
          appears here.
        </p>
      )}
      {rows.length > 0 && (
        <div className="table-wrap">
        <table className="grid">
          <thead>
            <tr>
              <th>Time</th>
              <th>Provider</th>
              <th>Model</th>
              <th>Status</th>
              <th className="number">Latency</th>
              <th className="number">TTFT</th>
              <th className="number">Tokens</th>
              <th className="number">Cost</th>
              <th>User</th>
              <th>Session</th>
              <th>Prompt</th>
              <th>Properties</th>
              <th>Cache</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((row) => (
              <tr
                key={row.requestId}
                data-request-id={row.requestId}
                className={row.statusCode >= 400 || row.error ? "failed" : ""}
                onClick={() => setSelected(row.requestId)}
              >
                <td className="mono">{formatTime(row.createdAt)}</td>
                <td>{row.provider}</td>
                <td>{row.model}</td>
                <td>{row.statusCode}</td>
                <td className="number">{formatMs(row.latencyMs)}</td>
                <td className="number">{formatMs(row.timeToFirstTokenMs)}</td>
                <td className="number">{formatCount(row.usage?.totalTokens ?? 0n)}</td>
                <td className="number">{formatCost(row.costUsd)}</td>
                <td className="clip" title={row.userId}>
                  {row.userId}
                </td>
                <td className="clip" title={row.sessionId}>
                  {row.sessionName || row.sessionId}
                </td>
                <td>{row.promptId && `${row.promptId}@${row.promptVersion}`}</td>
                <td className="clip" title={formatProperties(row.properties)}>
                  {formatProperties(row.properties)}
                </td>
                <td>{row.cacheHit ? "hit" : ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
        </div>
      )}
      {cursor && (
        <button type="button" onClick={() => void load(cursor)} disabled={loading}>
          {loading ? "Loading..." : "Load more"}
        </button>
      )}
      {selected && <RequestDetail api={api} requestId={selected} onClose={() => setSelected(null)} />}
    </section>
  );
}
