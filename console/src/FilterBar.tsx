import { useEffect, useState, type FormEvent } from "react";

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
  useEffect(
    () =>
      setPropertyText(
        [...params].filter(([name]) => name.startsWith("prop.")).map(([name, value]) => `${name.slice(5)}=${value}`).join(", "),
      ),
    [params],
  );

  const set = (name: string, value: string) =>
    setDraft((previous) => {
      const next = new URLSearchParams(previous);
      if (value) next.set(name, value);
      else next.delete(name);
      return next;
    });

  function apply(event: FormEvent) {
    event.preventDefault();
    const next = new URLSearchParams([...draft].filter(([name]) => !name.startsWith("prop.") && name !== "request"));
    for (const pair of propertyText.split(",")) {
      const [key, ...rest] = pair.split("=");
      if (key.trim() && rest.length) next.append(`prop.${key.trim()}`, rest.join("=").trim());
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
      <div className="actions">
        <button type="submit">Apply</button>
        <button type="button" className="quiet" onClick={() => onApply(new URLSearchParams())}>
          Clear
        </button>
      </div>
    </form>
  );
}
