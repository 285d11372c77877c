import { timestampMs } from "@bufbuild/protobuf/wkt";
import { useEffect, useMemo, useState } from "react";
import { explain, type Api } from "./api";
import { formatCost, formatCount, formatMs, formatTime } from "./format";
import type { LogRecord } from "./gen/candela/logs/v1/log_record_pb";
import type { GetSessionResponse, SessionNode, SessionSummary } from "./gen/candela/query/v1/query_service_pb";
import { rangeOf, RANGES } from "./ranges";
import { hrefFor, navigate } from "./route";

/** Sessions over a range: name, requests, cost and how long each ran. */
export function SessionsPage({ api, params }: { api: Api; params: URLSearchParams }) {
  const range = useMemo(() => rangeOf(params), [params]);
  const [sessions, setSessions] = useState<SessionSummary[] | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    let current = true;
    setSessions(null);
    api.query
      .querySessions({ start: range.start, end: range.end, limit: 200 })
      .then((response) => current && setSessions(response.sessions))
      .catch((failure: unknown) => current && setError(explain(failure)));
    return () => {
      current = false;
    };
  }, [api, range]);
  return (
    <section>
      <div className="toolbar">
        <h2>Sessions</h2>
        <select aria-label="Range" value={range.key} onChange={(event) => navigate("sessions", new URLSearchParams({ range: event.target.value }))}>
          {Object.entries(RANGES).map(([key, option]) => (
            <option key={key} value={key}>
              {option.label}
            </option>
          ))}
        </select>
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {sessions && sessions.length === 0 && (
        <p className="empty">No session in this range. Send Candela-Session-Id (and -Path, -Name) with your calls to group them.</p>
      )}
      {sessions && sessions.length > 0 && (
        <table className="grid">
          <thead>
            <tr>
              <th>Session</th>
              <th className="number">Requests</th>
              <th className="number">Cost</th>
              <th className="number">Duration</th>
              <th>Last request</th>
            </tr>
          </thead>
          <tbody>
            {sessions.map((session) => (
              <tr key={session.sessionId} data-session-id={session.sessionId}>
                <td>
                  <a href={hrefFor("session", new URLSearchParams({ id: session.sessionId }))}>{session.sessionName || session.sessionId}</a>
                </td>
                <td className="number">{formatCount(session.metrics?.requestCount ?? 0n)}</td>
                <td className="number">{formatCost(session.metrics?.costUsd)}</td>
                <td className="number">{duration(session)}</td>
                <td className="mono">{formatTime(session.lastRequestAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function duration(session: SessionSummary): string {
  if (!session.firstRequestAt || !session.lastRequestAt) return "";
  return formatMs(timestampMs(session.lastRequestAt) - timestampMs(session.firstRequestAt));
}

interface Bar {
  depth: number;
  path: string;
  record: LogRecord;
}

/** Each request of the tree in path order, with its depth, for the waterfall. */
export function flattenTree(node: SessionNode, depth = 0, bars: Bar[] = []): Bar[] {
  const own = [...node.requests].sort((a, b) => timestampMs(a.createdAt!) - timestampMs(b.createdAt!));
  for (const record of own) bars.push({ depth, path: node.path, record });
  for (const child of node.children) flattenTree(child, depth + 1, bars);
  return bars;
}

/** One session as a waterfall over time: a bar per request, indented by its session path. */
export function SessionView({ api, params }: { api: Api; params: URLSearchParams }) {
  const sessionId = params.get("id") ?? "";
  const [session, setSession] = useState<GetSessionResponse | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    let current = true;
    api.query
      .getSession({ sessionId })
      .then((response) => current && setSession(response))
      .catch((failure: unknown) => current && setError(explain(failure)));
    return () => {
      current = false;
    };
  }, [api, sessionId]);
  const bars = useMemo(() => (session?.root ? flattenTree(session.root) : []), [session]);
  const start = Math.min(...bars.map((bar) => timestampMs(bar.record.createdAt!)));
  const end = Math.max(...bars.map((bar) => timestampMs(bar.record.createdAt!) + Number(bar.record.latencyMs)));
  const span = Math.max(end - start, 1);
  return (
    <section>
      <div className="toolbar">
        <h2>{session?.session?.sessionName || sessionId}</h2>
        <a href="#/sessions">All sessions</a>
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {session?.root?.metrics && (
        <p className="summary">
          {formatCount(session.root.metrics.requestCount)} requests, {formatCost(session.root.metrics.costUsd)}, {formatMs(span)} from first request to last answer
        </p>
      )}
      <div className="waterfall" role="list" aria-label="Session waterfall">
        {bars.map((bar) => {
          const at = timestampMs(bar.record.createdAt!) - start;
          return (
            <a
              key={bar.record.requestId}
              role="listitem"
              className="bar-row"
              href={hrefFor("requests", new URLSearchParams({ session: sessionId, request: bar.record.requestId }))}
              data-request-id={bar.record.requestId}
            >
              <span className="bar-label" style={{ paddingLeft: `${bar.depth * 14}px` }}>
                {bar.path} <span className="muted">{bar.record.model}</span>
              </span>
              <span className="bar-track">
                <span
                  className={`bar ${bar.record.statusCode >= 400 ? "failed" : ""}`}
                  style={{ left: `${(at / span) * 100}%`, width: `${Math.max((Number(bar.record.latencyMs) / span) * 100, 0.5)}%` }}
                />
              </span>
              <span className="bar-figures">
                {formatMs(bar.record.latencyMs)} · {formatCost(bar.record.costUsd)}
              </span>
            </a>
          );
        })}
      </div>
    </section>
  );
}
