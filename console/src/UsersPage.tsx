import { useEffect, useMemo, useState } from "react";
import { explain, type Api } from "./api";
import { formatCost, formatCount, formatTime } from "./format";
import type { UserMetrics } from "./gen/candela/query/v1/query_service_pb";
import { rangeOf, RANGES } from "./ranges";
import { hrefFor, navigate } from "./route";

/** Per-user totals over a range; each user links to their requests. */
export function UsersPage({ api, params }: { api: Api; params: URLSearchParams }) {
  const range = useMemo(() => rangeOf(params), [params]);
  const [users, setUsers] = useState<UserMetrics[] | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    let current = true;
    setUsers(null);
    api.query
      .queryUserMetrics({ start: range.start, end: range.end, limit: 200 })
      .then((response) => current && setUsers(response.users))
      .catch((failure: unknown) => current && setError(explain(failure)));
    return () => {
      current = false;
    };
  }, [api, range]);
  return (
    <section>
      <div className="toolbar">
        <h2>Users</h2>
        <select aria-label="Range" value={range.key} onChange={(event) => navigate("users", new URLSearchParams({ range: event.target.value }))}>
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
      {users && users.length === 0 && <p className="empty">No user in this range. Send Candela-User-Id with your calls to see who uses what.</p>}
      {users && users.length > 0 && (
        <table className="grid">
          <thead>
            <tr>
              <th>User</th>
              <th className="number">Requests</th>
              <th className="number">Cost</th>
              <th className="number">Tokens</th>
              <th className="number">Errors</th>
              <th>Last seen</th>
            </tr>
          </thead>
          <tbody>
            {users.map((user) => (
              <tr key={user.userId} data-user-id={user.userId}>
                <td>
                  <a href={hrefFor("requests", new URLSearchParams({ user: user.userId }))}>{user.userId || "(no user)"}</a>
                </td>
                <td className="number">{formatCount(user.metrics?.requestCount ?? 0n)}</td>
                <td className="number">{formatCost(user.metrics?.costUsd)}</td>
                <td className="number">{formatCount(user.metrics?.totalTokens ?? 0n)}</td>
                <td className="number">{formatCount(user.metrics?.errorCount ?? 0n)}</td>
                <td className="mono">{formatTime(user.lastRequestAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
