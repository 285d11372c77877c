import { useEffect, useState } from "react";
import { explain, type Api } from "./api";
import { formatTime } from "./format";
import type { ComparePromptVersionsResponse, Prompt, PromptSummary, RenderPromptResponse } from "./gen/candela/prompts/v1/prompts_service_pb";
import { hrefFor, navigate } from "./route";

/** Stored prompt templates: the list, a prompt's versions, a diff of two, environments and a render preview. */
export function PromptsPage({ api, params }: { api: Api; params: URLSearchParams }) {
  const promptId = params.get("id");
  return promptId ? <PromptView api={api} promptId={promptId} params={params} /> : <PromptList api={api} />;
}

function PromptList({ api }: { api: Api }) {
  const [prompts, setPrompts] = useState<PromptSummary[] | null>(null);
  const [error, setError] = useState("");
  useEffect(() => {
    api.prompts
      .listPrompts({ pageSize: 200 })
      .then((response) => setPrompts(response.prompts))
      .catch((failure: unknown) => setError(explain(failure)));
  }, [api]);
  return (
    <section>
      <h2>Prompts</h2>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {prompts && prompts.length === 0 && <p className="empty">No prompt yet. Create one with the prompts API (POST /v1/prompts).</p>}
      {prompts && prompts.length > 0 && (
        <table className="grid">
          <thead>
            <tr>
              <th>Prompt</th>
              <th className="number">Latest version</th>
              <th>Environments</th>
              <th>Updated</th>
            </tr>
          </thead>
          <tbody>
            {prompts.map((prompt) => (
              <tr key={prompt.promptId} data-prompt-id={prompt.promptId}>
                <td>
                  <a href={hrefFor("prompts", new URLSearchParams({ id: prompt.promptId }))}>{prompt.promptId}</a>
                </td>
                <td className="number">{prompt.latestVersion}</td>
                <td>
                  {Object.entries(prompt.environments)
                    .map(([name, version]) => `${name} → ${version}`)
                    .join(", ")}
                </td>
                <td className="mono">{formatTime(prompt.updateTime)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function PromptView({ api, promptId, params }: { api: Api; promptId: string; params: URLSearchParams }) {
  const [versions, setVersions] = useState<Prompt[] | null>(null);
  const [error, setError] = useState("");
  const [compare, setCompare] = useState<ComparePromptVersionsResponse | null>(null);
  const [reload, setReload] = useState(0);
  useEffect(() => {
    api.prompts
      .listPromptVersions({ promptId, pageSize: 200 })
      .then((response) => setVersions(response.versions))
      .catch((failure: unknown) => setError(explain(failure)));
  }, [api, promptId, reload]);
  const newest = versions?.[0]?.version ?? 0;
  const oldest = versions?.at(-1)?.version ?? 0;
  const base = Number(params.get("base") ?? (newest > 1 ? newest - 1 : oldest));
  const target = Number(params.get("target") ?? newest);
  useEffect(() => {
    if (!base || !target || base === target) return setCompare(null);
    api.prompts
      .comparePromptVersions({ promptId, baseVersion: base, targetVersion: target })
      .then(setCompare)
      .catch((failure: unknown) => setError(explain(failure)));
  }, [api, promptId, base, target]);
  const go = (name: string, value: number) => {
    const next = new URLSearchParams(params);
    next.set(name, String(value));
    navigate("prompts", next);
  };
  return (
    <section>
      <div className="toolbar">
        <h2>{promptId}</h2>
        <a href="#/prompts">All prompts</a>
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {versions && (
        <>
          <table className="grid" aria-label="Versions">
            <thead>
              <tr>
                <th className="number">Version</th>
                <th>Environments</th>
                <th>Variables</th>
                <th>Created</th>
                <th>Move an environment here</th>
              </tr>
            </thead>
            <tbody>
              {versions.map((version) => (
                <tr key={version.version} data-version={version.version}>
                  <td className="number">{version.version}</td>
                  <td>{version.environments.join(", ")}</td>
                  <td className="mono">{version.variables.join(", ")}</td>
                  <td className="mono">{formatTime(version.createTime)}</td>
                  <td>
                    <MoveEnvironment api={api} promptId={promptId} version={version.version} onMoved={() => setReload((n) => n + 1)} onError={setError} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          <div className="toolbar">
            <h3>Compare</h3>
            <VersionSelect label="Base version" versions={versions} value={base} onChange={(value) => go("base", value)} />
            <VersionSelect label="Target version" versions={versions} value={target} onChange={(value) => go("target", value)} />
          </div>
          {compare && <Diff compare={compare} />}
          <RenderPreview api={api} promptId={promptId} version={target} variables={versions.find((v) => v.version === target)?.variables ?? []} />
        </>
      )}
    </section>
  );
}

function VersionSelect({ label, versions, value, onChange }: { label: string; versions: Prompt[]; value: number; onChange: (value: number) => void }) {
  return (
    <label>
      {label}{" "}
      <select aria-label={label} value={value} onChange={(event) => onChange(Number(event.target.value))}>
        {versions.map((version) => (
          <option key={version.version} value={version.version}>
            {version.version}
          </option>
        ))}
      </select>
    </label>
  );
}

/** The templates side by side, each line marked as removed, added or kept (from the API's unified diff). */
export function sideBySide(diff: string): { left: string; right: string; change: "same" | "removed" | "added" | "changed" }[] {
  const rows: { left: string; right: string; change: "same" | "removed" | "added" | "changed" }[] = [];
  let removed: string[] = [];
  let added: string[] = [];
  const flush = () => {
    for (let index = 0; index < Math.max(removed.length, added.length); index++) {
      const left = removed[index];
      const right = added[index];
      rows.push({ left: left ?? "", right: right ?? "", change: left === undefined ? "added" : right === undefined ? "removed" : "changed" });
    }
    removed = [];
    added = [];
  };
  for (const line of diff.split("\n")) {
    if (line.startsWith("---") || line.startsWith("+++") || line.startsWith("@@")) continue;
    if (line.startsWith("-")) removed.push(line.slice(1));
    else if (line.startsWith("+")) added.push(line.slice(1));
    else {
      flush();
      if (line.startsWith(" ")) rows.push({ left: line.slice(1), right: line.slice(1), change: "same" });
    }
  }
  flush();
  return rows;
}

function Diff({ compare }: { compare: ComparePromptVersionsResponse }) {
  const rows = sideBySide(compare.diff);
  return (
    <div>
      {(compare.addedVariables.length > 0 || compare.removedVariables.length > 0) && (
        <p className="summary">
          {compare.addedVariables.length > 0 && `Variables added: ${compare.addedVariables.join(", ")}. `}
          {compare.removedVariables.length > 0 && `Variables removed: ${compare.removedVariables.join(", ")}.`}
        </p>
      )}
      {rows.length === 0 && <p className="empty">The two versions have the same template.</p>}
      <table className="diff" aria-label="Diff">
        <thead>
          <tr>
            <th>Version {compare.base?.version}</th>
            <th>Version {compare.target?.version}</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((row, index) => (
            <tr key={index} className={row.change}>
              <td className="left">{row.left}</td>
              <td className="right">{row.right}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function MoveEnvironment({ api, promptId, version, onMoved, onError }: { api: Api; promptId: string; version: number; onMoved: () => void; onError: (message: string) => void }) {
  const [environment, setEnvironment] = useState("");
  return (
    <form
      className="inline"
      onSubmit={async (event) => {
        event.preventDefault();
        try {
          await api.prompts.setEnvironment({ promptId, environment: environment.trim(), version });
          setEnvironment("");
          onMoved();
        } catch (failure) {
          onError(explain(failure));
        }
      }}
    >
      <input aria-label={`Environment for version ${version}`} placeholder="production" value={environment} onChange={(event) => setEnvironment(event.target.value)} />
      <button type="submit" className="quiet" disabled={!environment.trim()}>
        Move
      </button>
    </form>
  );
}

function RenderPreview({ api, promptId, version, variables }: { api: Api; promptId: string; version: number; variables: string[] }) {
  const [inputs, setInputs] = useState<Record<string, string>>({});
  const [rendered, setRendered] = useState<RenderPromptResponse | null>(null);
  const [error, setError] = useState("");
  return (
    <form
      className="preview"
      aria-label="Render preview"
      onSubmit={async (event) => {
        event.preventDefault();
        setError("");
        try {
          setRendered(await api.prompts.renderPrompt({ promptId, version, inputs }));
        } catch (failure) {
          setRendered(null);
          setError(explain(failure));
        }
      }}
    >
      <h3>Render version {version}</h3>
      {variables.map((name) => (
        <label key={name}>
          {name}
          <input aria-label={name} value={inputs[name] ?? ""} onChange={(event) => setInputs({ ...inputs, [name]: event.target.value })} />
        </label>
      ))}
      <button type="submit">Render</button>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {rendered && (
        <ol className="conversation" aria-label="Rendered messages">
          {rendered.messages.map((message, index) => (
            <li key={index} className={`turn ${message.role}`}>
              <span className="role">{message.role}</span>
              <div className="message-text">{message.content}</div>
            </li>
          ))}
        </ol>
      )}
    </form>
  );
}
