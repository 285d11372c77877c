import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Api } from "./api";
import { FORMATS, formatBytes, useExport, type ExportKind } from "./exporting";
import type { RequestFilterSchema, RequestSortSchema } from "./gen/candela/query/v1/query_service_pb";

interface Props {
  api: Api;
  filter: MessageInitShape<typeof RequestFilterSchema>;
  sort: MessageInitShape<typeof RequestSortSchema>;
  disabled?: boolean;
}

/** "Export CSV" / "Export JSONL" of every request the current filter lists, with progress and Cancel. */
export function ExportControl({ api, filter, sort, disabled }: Props) {
  const { state, start, cancel } = useExport(api, filter, sort);
  const kinds = Object.keys(FORMATS) as ExportKind[];
  return (
    <span className="export" aria-live="polite">
      {state.running ? (
        <>
          <span className="export-progress" data-export-progress>
            Exporting {FORMATS[state.running].label}: {state.rows.toLocaleString("en-US")} rows, {formatBytes(state.bytes)}
          </span>
          <button type="button" className="quiet" onClick={cancel}>
            Cancel
          </button>
        </>
      ) : (
        kinds.map((kind) => (
          <button
            key={kind}
            type="button"
            className="quiet"
            disabled={disabled}
            title="Download every request the current filter lists"
            onClick={() => void start(kind)}
          >
            Export {FORMATS[kind].label}
          </button>
        ))
      )}
      {!state.running && state.message && (
        <span className="export-result" data-export-result>
          {state.message}
        </span>
      )}
    </span>
  );
}
