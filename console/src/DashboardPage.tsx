import { timestampMs } from "@bufbuild/protobuf/wkt";
import { useEffect, useMemo, useState } from "react";
import { explain, type Api } from "./api";
import { Chart, type Series } from "./Chart";
import { formatCost, formatCount, formatMs, formatTotalCost } from "./format";
import { GroupBy, type MetricsGroup, type RequestMetrics, type SessionSummary } from "./gen/candela/query/v1/query_service_pb";
import { bucketStarts, rangeOf, RANGES } from "./ranges";
import { scoreTotals } from "./scores";
import { hrefFor, navigate } from "./route";

const BREAKDOWNS: Record<string, { label: string; groupBy: GroupBy }> = {
  model: { label: "Model", groupBy: GroupBy.MODEL },
  provider: { label: "Provider", groupBy: GroupBy.PROVIDER },
  user: { label: "User", groupBy: GroupBy.USER },
  property: { label: "Property", groupBy: GroupBy.PROPERTY },
};

interface Loaded {
  total?: RequestMetrics;
  series: MetricsGroup[];
  breakdown: MetricsGroup[];
  sessions: SessionSummary[];
}

/** Totals, time series and breakdowns over a range: every figure is the query API's own aggregate. */
export function DashboardPage({ api, params }: { api: Api; params: URLSearchParams }) {
  const range = useMemo(() => rangeOf(params), [params]);
  const by = BREAKDOWNS[params.get("by") ?? "model"] ? (params.get("by") ?? "model") : "model";
  const propertyKey = params.get("key") ?? "";
  const [loaded, setLoaded] = useState<Loaded | null>(null);
  const [error, setError] = useState("");

  useEffect(() => {
    let current = true;
    setError("");
    setLoaded(null);
    const window_ = { start: range.start, end: range.end };
    const breakdownReady = by !== "property" || propertyKey !== "";
    Promise.all([
      api.query.aggregateRequests({ ...window_ }),
      api.query.aggregateRequests({ ...window_, groupBy: [GroupBy.TIME], timeBucket: range.bucket }),
      breakdownReady
        ? api.query.aggregateRequests({ ...window_, groupBy: [BREAKDOWNS[by].groupBy], propertyKey })
        : Promise.resolve({ groups: [] as MetricsGroup[] }),
      api.query.querySessions({ ...window_, limit: 100 }),
    ])
      .then(([total, series, breakdown, sessions]) => {
        if (!current) return;
        setLoaded({ total: total.groups[0]?.metrics, series: series.groups, breakdown: breakdown.groups, sessions: sessions.sessions });
      })
      .catch((failure: unknown) => current && setError(explain(failure)));
    return () => {
      current = false;
    };
  }, [api, range, by, propertyKey]);

  const charts = useMemo(() => {
    if (!loaded) return null;
    const starts = bucketStarts(range.startMs, range.endMs, range.bucketMs);
    const byStart = new Map(loaded.series.map((group) => [Date.parse(group.keys[0]), group.metrics]));
    const column = (pick: (metrics: RequestMetrics) => number): (number | null)[] =>
      starts.map((start) => {
        const metrics = byStart.get(start);
        return metrics ? pick(metrics) : 0;
      });
    const lines = (picks: [string, (metrics: RequestMetrics) => number][]): Series[] =>
      picks.map(([label, pick]) => ({ label, values: column(pick) }));
    return { starts, lines };
  }, [loaded, range]);

  const set = (name: string, value: string) => {
    const next = new URLSearchParams(params);
    if (value) next.set(name, value);
    else next.delete(name);
    navigate("dashboard", next);
  };

  const total = loaded?.total;
  const expensive = [...(loaded?.sessions ?? [])].sort((a, b) => Number(b.metrics?.costUsd ?? 0) - Number(a.metrics?.costUsd ?? 0)).slice(0, 5);
  return (
    <section className="dashboard">
      <div className="toolbar">
        <h2>Dashboard</h2>
        <select aria-label="Range" value={range.key} onChange={(event) => set("range", event.target.value)}>
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
      {!loaded && !error && <p className="empty">Loading...</p>}
      {total && (
        <dl className="totals" aria-label="Totals" data-start={new Date(range.startMs).toISOString()} data-end={new Date(range.endMs).toISOString()}>
          <Total name="Requests" value={formatCount(total.requestCount)} />
          <Total name="Cost" value={formatTotalCost(total.costUsd)} exact={total.costUsd} note={total.unpricedCount ? `${formatCount(total.unpricedCount)} unpriced` : ""} />
          <Total name="Tokens" value={formatCount(total.totalTokens)} />
          <Total name="Error rate" value={`${(total.errorRate * 100).toFixed(1)}%`} />
          <Total name="Latency p50 / p95 / p99" value={`${formatMs(Math.round(total.latencyP50Ms))} / ${formatMs(Math.round(total.latencyP95Ms))} / ${formatMs(Math.round(total.latencyP99Ms))}`} />
          <Total name="TTFT p50 / p95" value={`${formatMs(Math.round(total.ttftP50Ms))} / ${formatMs(Math.round(total.ttftP95Ms))}`} />
          {scoreTotals(total).map(([name, value, note]) => (
            <Total key={name} name={name} value={value} note={note} />
          ))}
        </dl>
      )}
      {charts && (
        <div className="charts">
          <Chart title="Requests" times={charts.starts} series={charts.lines([["requests", (m) => Number(m.requestCount)]])} />
          <Chart title="Cost (USD)" times={charts.starts} series={charts.lines([["cost", (m) => Number(m.costUsd)]])} />
          <Chart title="Tokens" times={charts.starts} series={charts.lines([["input", (m) => Number(m.promptTokens)], ["output", (m) => Number(m.completionTokens)]])} />
          <Chart title="Error rate" unit="%" times={charts.starts} series={charts.lines([["errors", (m) => m.errorRate * 100]])} />
          <Chart title="Latency (ms)" times={charts.starts} series={charts.lines([["p50", (m) => m.latencyP50Ms], ["p95", (m) => m.latencyP95Ms], ["p99", (m) => m.latencyP99Ms]])} />
          <Chart title="Time to first token (ms)" times={charts.starts} series={charts.lines([["p50", (m) => m.ttftP50Ms], ["p95", (m) => m.ttftP95Ms], ["p99", (m) => m.ttftP99Ms]])} />
        </div>
      )}
      {loaded && (
        <div className="columns">
          <div>
            <div className="toolbar">
              <h3>By</h3>
              <select aria-label="Breakdown" value={by} onChange={(event) => set("by", event.target.value)}>
                {Object.entries(BREAKDOWNS).map(([key, option]) => (
                  <option key={key} value={key}>
                    {option.label}
                  </option>
                ))}
              </select>
              {by === "property" && (
                <input aria-label="Property name" placeholder="property name" defaultValue={propertyKey} onKeyDown={(event) => event.key === "Enter" && set("key", event.currentTarget.value)} />
              )}
            </div>
            <table className="grid" aria-label="Breakdown">
              <thead>
                <tr>
                  <th>{BREAKDOWNS[by].label}</th>
                  <th className="number">Requests</th>
                  <th className="number">Cost</th>
                  <th className="number">Tokens</th>
                  <th className="number">Errors</th>
                  <th className="number">p95</th>
                </tr>
              </thead>
              <tbody>
                {loaded.breakdown.map((group) => (
                  <tr key={group.keys.join("/")}>
                    <td>{group.keys[0] || "(none)"}</td>
                    <td className="number">{formatCount(group.metrics?.requestCount ?? 0n)}</td>
                    <td className="number">{formatCost(group.metrics?.costUsd)}</td>
                    <td className="number">{formatCount(group.metrics?.totalTokens ?? 0n)}</td>
                    <td className="number">{formatCount(group.metrics?.errorCount ?? 0n)}</td>
                    <td className="number">{formatMs(Math.round(group.metrics?.latencyP95Ms ?? 0))}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <div>
            <h3>Most expensive sessions</h3>
            <table className="grid">
              <tbody>
                {expensive.map((session) => (
                  <tr key={session.sessionId}>
                    <td>
                      <a href={hrefFor("session", new URLSearchParams({ id: session.sessionId }))}>{session.sessionName || session.sessionId}</a>
                    </td>
                    <td className="number">{formatCost(session.metrics?.costUsd)}</td>
                    <td className="number">{session.lastRequestAt && session.firstRequestAt ? formatMs(timestampMs(session.lastRequestAt) - timestampMs(session.firstRequestAt)) : ""}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </div>
      )}
    </section>
  );
}

function Total({ name, value, note, exact }: { name: string; value: string; note?: string; exact?: string }) {
  return (
    <div className="total" data-total={name}>
      <dt>{name}</dt>
      <dd title={exact ? `$${exact}` : undefined}>{value}</dd>
      {note && <small>{note}</small>}
    </div>
  );
}
