// Export of the current filter as a file, streamed: the chunks of QueryService.ExportRequests (gRPC-Web,
// the key in a header as on every call, never in a URL) are kept as a list of parts and become one Blob
// at the end, so the page never holds the file as one string and never freezes while it grows. Progress
// (rows, bytes) is counted chunk by chunk; an AbortController cancels the call.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { useCallback, useEffect, useRef, useState } from "react";
import { explain, type Api } from "./api";
import {
  ExportFormat,
  type ExportRequestsRequestSchema,
  type RequestFilterSchema,
  type RequestSortSchema,
} from "./gen/candela/query/v1/query_service_pb";

type Filter = MessageInitShape<typeof RequestFilterSchema>;
type Sort = MessageInitShape<typeof RequestSortSchema>;

export type ExportKind = "csv" | "jsonl";

export const FORMATS: Record<ExportKind, { format: ExportFormat; label: string; type: string }> = {
  csv: { format: ExportFormat.CSV, label: "CSV", type: "text/csv" },
  jsonl: { format: ExportFormat.JSONL, label: "JSONL", type: "application/x-ndjson" },
};

/** The export request of the listed filter and sort (the page's own limit and cursor do not apply). */
export function exportRequest(kind: ExportKind, filter: Filter, sort: Sort): MessageInitShape<typeof ExportRequestsRequestSchema> {
  return { format: FORMATS[kind].format, filter, sort };
}

const NEWLINE = 0x0a;
const QUOTE = 0x22;

/**
 * Counts the rows of a file as its chunks arrive. JSON Lines: one row per line. CSV (RFC 4180): a line
 * break inside a quoted cell is part of the cell, so quotes are followed across chunk boundaries (a doubled
 * quote toggles twice, which leaves the state as it was); the header line is not a row.
 */
export class RowCounter {
  private lines = 0;
  private quoted = false;

  constructor(private readonly kind: ExportKind) {}

  add(chunk: Uint8Array): void {
    if (this.kind === "jsonl") {
      for (const byte of chunk) if (byte === NEWLINE) this.lines += 1;
      return;
    }
    for (const byte of chunk) {
      if (byte === QUOTE) this.quoted = !this.quoted;
      else if (byte === NEWLINE && !this.quoted) this.lines += 1;
    }
  }

  get rows(): number {
    return this.kind === "csv" ? Math.max(0, this.lines - 1) : this.lines;
  }
}

/** A file name that says what and when: candela-requests-2026-12-07T14-03-05.csv. */
export function exportFileName(kind: ExportKind, now: Date): string {
  const stamp = now.toISOString().slice(0, 19).replace(/:/g, "-");
  return `candela-requests-${stamp}.${kind}`;
}

/** A byte count for people: 512 B, 3.4 KB, 12.0 MB. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

export interface Collected {
  parts: Uint8Array[];
  rows: number;
  bytes: number;
}

/** Reads every chunk of an export into a list of parts, reporting progress after each chunk. */
export async function collect(
  kind: ExportKind,
  chunks: AsyncIterable<{ data: Uint8Array }>,
  onProgress: (rows: number, bytes: number) => void,
): Promise<Collected> {
  const counter = new RowCounter(kind);
  const parts: Uint8Array[] = [];
  let bytes = 0;
  for await (const chunk of chunks) {
    if (chunk.data.length === 0) continue;
    parts.push(chunk.data);
    counter.add(chunk.data);
    bytes += chunk.data.length;
    onProgress(counter.rows, bytes);
  }
  return { parts, rows: counter.rows, bytes };
}

export interface ExportState {
  running: ExportKind | null;
  rows: number;
  bytes: number;
  message: string;
}

const IDLE: ExportState = { running: null, rows: 0, bytes: 0, message: "" };

/** Starts, follows and cancels exports of the listed requests; the finished file is saved as a download. */
export function useExport(api: Api, filter: Filter, sort: Sort) {
  const [state, setState] = useState<ExportState>(IDLE);
  const controller = useRef<AbortController | null>(null);
  useEffect(() => () => controller.current?.abort(), []);

  const start = useCallback(
    async (kind: ExportKind) => {
      controller.current?.abort();
      const abort = new AbortController();
      controller.current = abort;
      setState({ running: kind, rows: 0, bytes: 0, message: "" });
      try {
        const chunks = api.query.exportRequests(exportRequest(kind, filter, sort), { signal: abort.signal });
        const file = await collect(kind, chunks, (rows, bytes) => setState((previous) => ({ ...previous, rows, bytes })));
        save(new Blob(file.parts as BlobPart[], { type: FORMATS[kind].type }), exportFileName(kind, new Date()));
        setState({ running: null, rows: file.rows, bytes: file.bytes, message: `Exported ${file.rows.toLocaleString("en-US")} rows (${formatBytes(file.bytes)}).` });
      } catch (failure) {
        const message = abort.signal.aborted ? "Export cancelled." : explain(failure);
        setState((previous) => ({ ...previous, running: null, message }));
      } finally {
        if (controller.current === abort) controller.current = null;
      }
    },
    [api, filter, sort],
  );

  const cancel = useCallback(() => controller.current?.abort(), []);
  return { state, start, cancel };
}

/** Hands a Blob to the browser as a download (a blob: URL of this page, never the API key). */
export function save(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.rel = "noopener";
  document.body.append(link);
  link.click();
  link.remove();
  // The download has its own reference to the Blob once started.
  window.setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
