import { useEffect, useState } from "react";
import { toJsonString } from "@bufbuild/protobuf";
import { explain, type Api } from "./api";
import { formatMs } from "./format";
import { LogRecordSchema } from "./gen/candela/logs/v1/log_record_pb";
import type { GetRequestResponse } from "./gen/candela/query/v1/query_service_pb";

/** One request: its record and bodies as text. Logged bodies are untrusted: they are only ever text nodes. */
export function RequestDetail({ api, requestId, onClose }: { api: Api; requestId: string; onClose: () => void }) {
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
      {record && (
        <>
          <dl className="facts">
            <dt>Model</dt>
            <dd>{record.model}</dd>
            <dt>Status</dt>
            <dd>{record.statusCode}</dd>
            <dt>Latency</dt>
            <dd>{formatMs(record.latencyMs)}</dd>
            <dt>Cost</dt>
            <dd>{record.costUsd === undefined ? "unpriced" : `$${record.costUsd}`}</dd>
          </dl>
          <h4>Request body</h4>
          <pre className="body">{record.requestBodyOmitted ? "(not recorded)" : pretty(detail.requestBody)}</pre>
          <h4>Response body</h4>
          <pre className="body">{record.responseBodyOmitted ? "(not recorded)" : pretty(detail.responseBody)}</pre>
          <h4>Record</h4>
          <pre className="body">{toJsonString(LogRecordSchema, record, { prettySpaces: 2 })}</pre>
        </>
      )}
    </aside>
  );
}

function pretty(text: string): string {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}
