import { useState, type FormEvent } from "react";
import { connect, explain, type Api } from "./api";

/** Signs in with a Candela API key: the key is checked with one cheap query before the console opens. */
export function SignIn({ onSignedIn, baseUrl }: { onSignedIn: (api: Api) => void; baseUrl?: string }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState("");
  const [busy, setBusy] = useState(false);

  async function submit(event: FormEvent) {
    event.preventDefault();
    setBusy(true);
    setError("");
    const api = connect(key.trim(), baseUrl);
    try {
      await api.query.queryRequests({ limit: 1 });
      onSignedIn(api);
    } catch (failure) {
      setError(explain(failure));
    } finally {
      setBusy(false);
    }
  }

  return (
    <form className="signin" onSubmit={submit} autoComplete="off">
      <h1>Candela</h1>
      <label htmlFor="api-key">API key</label>
      <input
        id="api-key"
        type="password"
        value={key}
        onChange={(event) => setKey(event.target.value)}
        placeholder="cnd-..."
        autoFocus
      />
      <button type="submit" disabled={busy || key.trim() === ""}>
        {busy ? "Checking..." : "Sign in"}
      </button>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      <p className="hint">A key with the READ scope is enough to view logs. The key is kept in this tab only.</p>
    </form>
  );
}
