import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { useCallback, useEffect, useState, type FormEvent } from "react";
import { explain, type Api } from "./api";
import { formatTime } from "./format";
import { ApiKeyScope, type ApiKey, type Organization } from "./gen/candela/auth/v1/auth_service_pb";

const SCOPES: [ApiKeyScope, string][] = [
  [ApiKeyScope.PROXY, "proxy"],
  [ApiKeyScope.READ, "read"],
  [ApiKeyScope.WRITE, "write"],
  [ApiKeyScope.ADMIN, "admin"],
];

/** The organization's limits and retention, and its API keys (an ADMIN key is needed to change them). */
export function SettingsPage({ api }: { api: Api }) {
  return (
    <section>
      <h2>Settings</h2>
      <OrganizationLimits api={api} />
      <ApiKeys api={api} />
    </section>
  );
}

function OrganizationLimits({ api }: { api: Api }) {
  const [organization, setOrganization] = useState<Organization | null>(null);
  const [maxLogs, setMaxLogs] = useState("");
  const [retention, setRetention] = useState("");
  const [message, setMessage] = useState("");
  const [error, setError] = useState("");
  useEffect(() => {
    api.auth
      .getOrganization({})
      .then(({ organization }) => {
        setOrganization(organization ?? null);
        setMaxLogs(organization?.maxStoredLogs === undefined ? "" : String(organization.maxStoredLogs));
        setRetention(organization?.retentionDays === undefined ? "" : String(organization.retentionDays));
      })
      .catch((failure: unknown) => setError(explain(failure)));
  }, [api]);

  async function save(event: FormEvent) {
    event.preventDefault();
    setError("");
    setMessage("");
    if (!/^\d*$/.test(maxLogs) || !/^\d*$/.test(retention)) return setError("Limits are whole numbers; leave a field empty for no limit.");
    try {
      const { organization: updated } = await api.auth.updateOrganization({
        organization: {
          maxStoredLogs: maxLogs === "" ? undefined : BigInt(maxLogs),
          retentionDays: retention === "" ? undefined : Number(retention),
        },
        updateMask: { paths: ["max_stored_logs", "retention_days"] },
      });
      setOrganization(updated ?? null);
      setMessage("Saved.");
    } catch (failure) {
      setError(explain(failure));
    }
  }

  return (
    <form className="settings" onSubmit={save} aria-label="Organization limits">
      <h3>{organization?.name || "Organization"}</h3>
      <label>
        Most logs kept (empty: no limit)
        <input value={maxLogs} onChange={(event) => setMaxLogs(event.target.value)} inputMode="numeric" />
      </label>
      <label>
        Days logs are kept (empty: forever)
        <input value={retention} onChange={(event) => setRetention(event.target.value)} inputMode="numeric" />
      </label>
      <button type="submit">Save limits</button>
      {message && <p role="status">{message}</p>}
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
    </form>
  );
}

function ApiKeys({ api }: { api: Api }) {
  const [keys, setKeys] = useState<ApiKey[] | null>(null);
  const [error, setError] = useState("");
  const [secret, setSecret] = useState("");
  const [name, setName] = useState("");
  const [scopes, setScopes] = useState<Set<ApiKeyScope>>(new Set([ApiKeyScope.PROXY]));
  const [expires, setExpires] = useState("");

  const load = useCallback(() => {
    api.auth
      .listApiKeys({ includeRevoked: true })
      .then((response) => setKeys(response.apiKeys))
      .catch((failure: unknown) => setError(explain(failure)));
  }, [api]);
  useEffect(load, [load]);

  async function create(event: FormEvent) {
    event.preventDefault();
    setError("");
    try {
      const created = await api.auth.createApiKey({
        name: name.trim(),
        scopes: [...scopes],
        expireTime: expires ? timestampFromDate(new Date(expires)) : undefined,
      });
      setSecret(created.secret);
      setName("");
      load();
    } catch (failure) {
      setError(explain(failure));
    }
  }

  async function revoke(key: ApiKey) {
    setError("");
    try {
      await api.auth.revokeApiKey({ apiKeyId: key.id });
      load();
    } catch (failure) {
      setError(explain(failure));
    }
  }

  return (
    <div>
      <h3>API keys</h3>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      <form className="settings" onSubmit={create} aria-label="New API key">
        <label>
          Name
          <input value={name} onChange={(event) => setName(event.target.value)} />
        </label>
        <fieldset>
          <legend>Scopes</legend>
          {SCOPES.map(([scope, label]) => (
            <label key={label} className="inline">
              <input
                type="checkbox"
                checked={scopes.has(scope)}
                onChange={() => {
                  const next = new Set(scopes);
                  if (next.has(scope)) next.delete(scope);
                  else next.add(scope);
                  setScopes(next);
                }}
              />
              {label}
            </label>
          ))}
        </fieldset>
        <label>
          Expires (empty: never)
          <input type="datetime-local" value={expires} onChange={(event) => setExpires(event.target.value)} />
        </label>
        <button type="submit" disabled={!name.trim() || scopes.size === 0}>
          Create key
        </button>
      </form>
      {secret && (
        <div className="secret" role="status">
          <p>The new key, shown only now. Copy it somewhere safe:</p>
          <code data-secret>{secret}</code>{" "}
          <button type="button" className="quiet" onClick={() => setSecret("")}>
            Done
          </button>
        </div>
      )}
      {keys && (
        <table className="grid" aria-label="API keys">
          <thead>
            <tr>
              <th>Name</th>
              <th>Prefix</th>
              <th>Scopes</th>
              <th>Created</th>
              <th>Expires</th>
              <th>State</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {keys.map((key) => (
              <tr key={key.id} data-key-name={key.name}>
                <td>{key.name}</td>
                <td className="mono">{key.prefix}</td>
                <td>{key.scopes.map((scope) => SCOPES.find(([value]) => value === scope)?.[1] ?? scope).join(", ")}</td>
                <td className="mono">{formatTime(key.createTime)}</td>
                <td className="mono">{key.expireTime ? formatTime(key.expireTime) : "never"}</td>
                <td>{key.revokeTime ? "revoked" : "active"}</td>
                <td>
                  {!key.revokeTime && (
                    <button type="button" className="quiet" onClick={() => void revoke(key)}>
                      Revoke
                    </button>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}
