import { useEffect, useState, type FormEvent } from "react";
import { SCORE_PREFIX } from "./filters";

const TEXT = [
  ["model", "Model"],
  ["provider", "Provider"],
  ["status", "Status (e.g. 429, errors)"],
  ["user", "User"],
  ["session", "Session"],
  ["prompt", "Prompt"],
  ["version", "Version"],
] as const;
const RANGES = [
  ["cost", "Cost $"],
  ["latency", "Latency ms"],
] as const;

/** The filter builder: each field is a URL parameter, so the view it makes can be shared as a link. */
export function FilterBar({ params, onApply }: { params: URLSearchParams; onApply: (next: URLSearchParams) => void }) {
  const [draft, setDraft] = useState(() => new URLSearchParams(params));
  useEffect(() => setDraft(new URLSearchParams(params)), [params]);
  const [propertyText, setPropertyText] = useState("");
  const [scoreText, setScoreText] = useState("");
  useEffect(() => {
    setPropertyText(pairsText(params, "prop."));
    setScoreText(pairsText(params, SCORE_PREFIX));
  }, [params]);

  const set = (name: string, value: string) =>
    setDraft((previous) => {
      const next = new URLSearchParams(previous);
      if (value) next.set(name, value);
      else next.delete(name);
      return next;
    });

  function apply(event: FormEvent) {
    event.preventDefault();
    const next = new URLSearchParams(
      [...draft].filter(([name]) => !name.startsWith("prop.") && !name.startsWith(SCORE_PREFIX) && name !== "request"),
    );
    for (const [prefix, text] of [
      ["prop.", propertyText],
      [SCORE_PREFIX, scoreText],
    ]) {
      for (const pair of text.split(",")) {
        const [key, ...rest] = pair.split("=");
        if (key.trim() && rest.length) next.append(`${prefix}${key.trim()}`, rest.join("=").trim());
      }
    }
    onApply(next);
  }

  return (
    <form className="filters" onSubmit={apply} aria-label="Filters">
      {TEXT.map(([name, label]) => (
        <label key={name}>
          {label}
          <input name={name} value={draft.get(name) ?? ""} onChange={(event) => set(name, event.target.value)} />
        </label>
      ))}
      <label>
        Properties (name=value, ...)
        <input name="properties" value={propertyText} onChange={(event) => setPropertyText(event.target.value)} />
      </label>
      {RANGES.map(([name, label]) => (
        <label key={name} className="range">
          {label}
          <span>
            <input name={`${name}_min`} placeholder="min" value={draft.get(`${name}_min`) ?? ""} onChange={(event) => set(`${name}_min`, event.target.value)} />
            <input name={`${name}_max`} placeholder="max" value={draft.get(`${name}_max`) ?? ""} onChange={(event) => set(`${name}_max`, event.target.value)} />
          </span>
        </label>
      ))}
      <label>
        From
        <input name="from" type="datetime-local" value={draft.get("from") ?? ""} onChange={(event) => set("from", event.target.value)} />
      </label>
      <label>
        To
        <input name="to" type="datetime-local" value={draft.get("to") ?? ""} onChange={(event) => set("to", event.target.value)} />
      </label>
      <label>
        Cache
        <select name="cached" value={draft.get("cached") ?? ""} onChange={(event) => set("cached", event.target.value)}>
          <option value="">any</option>
          <option value="true">hit</option>
          <option value="false">miss</option>
        </select>
      </label>
      <label>
        Feedback
        <select name="feedback" value={draft.get("feedback") ?? ""} onChange={(event) => set("feedback", event.target.value)}>
          <option value="">any</option>
          <option value="up">▲ positive</option>
          <option value="down">▼ negative</option>
        </select>
      </label>
      <label>
        Scores (name=min..max, ...)
        <input name="scores" placeholder="accuracy=0.5.." value={scoreText} onChange={(event) => setScoreText(event.target.value)} />
      </label>
      <div className="actions">
        <button type="submit">Apply</button>
        <button type="button" className="quiet" onClick={() => onApply(new URLSearchParams())}>
          Clear
        </button>
      </div>
    </form>
  );
}

/** `name=value, ...` of the URL parameters starting with `prefix`, as the filter bar's text shows them. */
function pairsText(params: URLSearchParams, prefix: string): string {
  return [...params]
    .filter(([name]) => name.startsWith(prefix))
    .map(([name, value]) => `${name.slice(prefix.length)}=${value}`)
    .join(", ");
}
