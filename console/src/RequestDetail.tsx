import { toJsonString } from "@bufbuild/protobuf";
import { useEffect, useState } from "react";
import { explain, type Api } from "./api";
import { save } from "./exporting";
import { requestTurns, responseTurns, type Part, type Turn } from "./conversation";
import { formatCount, formatMs, formatProperties, formatTime } from "./format";
import { LogRecordSchema, type LogRecord } from "./gen/candela/logs/v1/log_record_pb";
import type { GetRequestResponse } from "./gen/candela/query/v1/query_service_pb";
import { RequestScores } from "./RequestScores";
import { hrefFor } from "./route";

/** One request as a person reads it. Logged bodies are untrusted: they only ever become text nodes. */
export function RequestDetail({
  api,
  requestId,
  onClose,
  onScores,
}: {
  api: Api;
  requestId: string;
  onClose: () => void;
  onScores?: (requestId: string, scores: Record<string, number>) => void;
}) {
  const [detail, setDetail] = useState<GetRequestResponse | null>(null);
  const [error, setError] = useState("");

  useEffect(() => {
    let current = true;
    setDetail(null);
    setError("");
    api.query
      .getRequest({ requestId })
      .then((response) => current && setDetail(response))
      .catch((failure: unknown) => current && setError(explain(failure)));
    return () => {
      current = false;
    };
  }, [api, requestId]);

  const record = detail?.request;
  return (
    <aside className="detail" aria-label="Request detail">
      <div className="toolbar">
        <h3 className="mono">{requestId}</h3>
        <button type="button" className="quiet" onClick={onClose}>
          Close
        </button>
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {!detail && !error && <p className="empty">Loading...</p>}
      {detail && record && (
        <>
          <Facts record={record} />
          <Usage record={record} />
          <RequestScores
            api={api}
            requestId={requestId}
            scores={detail.scores}
            onScores={(latest) => {
              setDetail((previous) => (previous ? { ...previous, scores: latest } : previous));
              onScores?.(requestId, latest);
            }}
          />
          {record.attempts.length > 0 && <Attempts record={record} />}
          <h4>Conversation</h4>
          <Conversation
            turns={record.requestBodyOmitted ? [] : requestTurns(detail.requestBody)}
            answer={record.responseBodyOmitted ? [] : responseTurns(detail.responseBody)}
          />
          <Body
            title="Request body"
            omitted={record.requestBodyOmitted}
            text={detail.requestBody}
            bytes={detail.requestBodyBytes}
            contentType={record.properties[REQUEST_CONTENT_TYPE] ?? ""}
            fileName={`${requestId}-request`}
          />
          <Body
            title="Response body"
            omitted={record.responseBodyOmitted}
            text={detail.responseBody}
            bytes={detail.responseBodyBytes}
            contentType={record.properties[RESPONSE_CONTENT_TYPE] ?? ""}
            fileName={`${requestId}-response`}
          />
          <Raw title="Record" text={toJsonString(LogRecordSchema, record, { prettySpaces: 2 })} />
        </>
      )}
    </aside>
  );
}

function Facts({ record }: { record: LogRecord }) {
  const rows: [string, React.ReactNode][] = [
    ["Time", formatTime(record.createdAt)],
    ["Provider", record.provider],
    ["Model", record.responseModel && record.responseModel !== record.model ? `${record.model} (answered by ${record.responseModel})` : record.model],
    ["Status", `${record.statusCode}${record.error ? `: ${record.error}` : ""}`],
    ["Path", record.path],
    ["Latency", formatMs(record.latencyMs)],
    ["Time to first token", record.timeToFirstTokenMs === undefined ? "" : formatMs(record.timeToFirstTokenMs)],
    ["Streamed", record.streamed ? "yes" : "no"],
    ["Finish reason", record.finishReason],
    ["Cache", record.cacheHit ? "hit" : "miss"],
    ["User", record.userId && <a href={hrefFor("requests", new URLSearchParams({ user: record.userId }))}>{record.userId}</a>],
    [
      "Session",
      record.sessionId && (
        <a href={hrefFor("session", new URLSearchParams({ id: record.sessionId }))}>
          {record.sessionName || record.sessionId} {record.sessionPath}
        </a>
      ),
    ],
    ["Properties", formatProperties(record.properties)],
    ["Prompt", record.promptId && `${record.promptId} version ${record.promptVersion}`],
    ["Prompt inputs", formatProperties(record.promptInputs)],
    ["Upstream", record.targetUrl],
    ["API key", record.apiKeyId],
    ["Request id", <span className="mono">{record.requestId}</span>],
    [
      "Trace",
      record.traceId && (
        <a className="mono" href={hrefFor("requests", new URLSearchParams({ trace: record.traceId }))} title="Every request of this trace">
          {record.traceId}
        </a>
      ),
    ],
  ];
  return (
    <dl className="facts">
      {rows
        .filter(([, value]) => value !== "" && value !== undefined && value !== false)
        .map(([name, value]) => (
          <div key={name} className="fact">
            <dt>{name}</dt>
            <dd>{value}</dd>
          </div>
        ))}
    </dl>
  );
}

function Usage({ record }: { record: LogRecord }) {
  const usage = record.usage;
  const counts: [string, bigint][] = [
    ["Input", usage?.promptTokens ?? 0n],
    ["Output", usage?.completionTokens ?? 0n],
    ["Cached (read)", usage?.cacheReadTokens ?? 0n],
    ["Cache write", usage?.cacheWriteTokens ?? 0n],
    ["Reasoning", usage?.reasoningTokens ?? 0n],
    ["Audio in / out", (usage?.audioPromptTokens ?? 0n) + (usage?.audioCompletionTokens ?? 0n)],
    ["Total", usage?.totalTokens ?? 0n],
  ];
  return (
    <table className="grid usage" aria-label="Tokens and cost">
      <tbody>
        {counts
          .filter(([name, count]) => count !== 0n || name === "Input" || name === "Output" || name === "Total")
          .map(([name, count]) => (
            <tr key={name}>
              <th>{name}</th>
              <td className="number">{formatCount(count)}</td>
            </tr>
          ))}
        <tr>
          <th>Cost</th>
          <td className="number" data-cost={record.costUsd ?? "unpriced"}>
            {record.costUsd === undefined ? "unpriced (no price known for this model)" : `$${record.costUsd}`}
          </td>
        </tr>
        {record.costSavedUsd !== undefined && (
          <tr>
            <th>Saved by the cache</th>
            <td className="number">${record.costSavedUsd}</td>
          </tr>
        )}
      </tbody>
    </table>
  );
}

function Attempts({ record }: { record: LogRecord }) {
  return (
    <>
      <h4>Upstream attempts</h4>
      <table className="grid" aria-label="Upstream attempts">
        <thead>
          <tr>
            <th>#</th>
            <th>Target</th>
            <th>Status</th>
            <th>Error</th>
            <th className="number">Latency</th>
          </tr>
        </thead>
        <tbody>
          {record.attempts.map((attempt, index) => (
            <tr key={index}>
              <td>{index + 1}</td>
              <td className="clip">{attempt.targetUrl}</td>
              <td>{attempt.statusCode || ""}</td>
              <td className="clip">{attempt.error}</td>
              <td className="number">{formatMs(attempt.latencyMs)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}

function Conversation({ turns, answer }: { turns: Turn[]; answer: Turn[] }) {
  if (!turns.length && !answer.length) return <p className="empty">No messages could be read from the bodies; see the raw JSON below.</p>;
  return (
    <ol className="conversation" aria-label="Conversation">
      {[...turns.map((turn) => ({ turn, answer: false })), ...answer.map((turn) => ({ turn, answer: true }))].map(({ turn, answer: isAnswer }, index) => (
        <li key={index} className={`turn ${turn.role} ${isAnswer ? "answer" : ""}`}>
          <span className="role">{isAnswer ? `${turn.role} (answer)` : turn.role}</span>
          {turn.parts.map((part, at) => (
            <PartView key={at} part={part} />
          ))}
        </li>
      ))}
    </ol>
  );
}

function PartView({ part }: { part: Part }) {
  switch (part.kind) {
    case "text":
      return <div className="message-text">{part.text}</div>;
    case "image":
      // Only images carried in the log itself are drawn: a remote URL would make the viewer's browser
      // fetch from wherever a logged body points (the page's policy refuses it anyway).
      return part.url.startsWith("data:image/") ? (
        <img className="thumbnail" src={part.url} alt="image sent with the request" />
      ) : (
        <div className="message-text muted">remote image, not loaded: {part.url}</div>
      );
    case "tool_call":
      return (
        <div className="tool">
          <span className="muted">tool call</span> <strong>{part.name}</strong> <span className="mono muted">{part.id}</span>
          <pre>{part.input}</pre>
        </div>
      );
    case "tool_result":
      return (
        <div className="tool">
          <span className="muted">tool result</span> <span className="mono muted">{part.id}</span>
          <pre>{part.text}</pre>
        </div>
      );
  }
}

// The properties that say what a body that is not JSON is (set by the proxy, candela_proxy/binary_bodies.py).
const REQUEST_CONTENT_TYPE = "candela-request-content-type";
const RESPONSE_CONTENT_TYPE = "candela-response-content-type";

/** A logged body: text as text; a binary one (audio, an image, an upload) as one line and a download, never
 * as bytes forced into text. */
function Body({
  title,
  omitted,
  text,
  bytes,
  contentType,
  fileName,
}: {
  title: string;
  omitted: boolean;
  text: string;
  bytes: Uint8Array;
  contentType: string;
  fileName: string;
}) {
  if (omitted) return <Raw title={title} text="(not recorded)" />;
  if (!bytes.length) return <Raw title={title} text={pretty(text)} />;
  const download = () =>
    save(new Blob([bytes as BlobPart], { type: contentType || "application/octet-stream" }), fileName + extension(contentType));
  return (
    <details className="raw" open>
      <summary>{title}</summary>
      <p className="binary">
        binary, {formatCount(bytes.length)} bytes, {contentType || "content type unknown"}{" "}
        <button type="button" className="quiet" onClick={download}>
          Download
        </button>
      </p>
    </details>
  );
}

function extension(contentType: string): string {
  const media = contentType.split(";", 1)[0].trim().toLowerCase();
  const known: Record<string, string> = {
    "audio/mpeg": ".mp3",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/ogg": ".ogg",
    "audio/flac": ".flac",
    "audio/aac": ".aac",
    "audio/opus": ".opus",
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
  };
  return known[media] ?? ".bin";
}

function Raw({ title, text }: { title: string; text: string }) {
  return (
    <details className="raw">
      <summary>{title}</summary>
      <pre className="body">{text}</pre>
    </details>
  );
}

function pretty(text: string): string {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}
