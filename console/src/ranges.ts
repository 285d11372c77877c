// Time ranges of the dashboard, sessions and users pages, and the automatic bucket width of each.
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { TimeBucket } from "./gen/candela/query/v1/query_service_pb";

export const RANGES: Record<string, { label: string; ms: number; bucket: TimeBucket; bucketMs: number }> = {
  "1h": { label: "Last hour", ms: 3_600_000, bucket: TimeBucket.MINUTE, bucketMs: 60_000 },
  "24h": { label: "Last 24 hours", ms: 86_400_000, bucket: TimeBucket.HOUR, bucketMs: 3_600_000 },
  "7d": { label: "Last 7 days", ms: 7 * 86_400_000, bucket: TimeBucket.HOUR, bucketMs: 3_600_000 },
  "30d": { label: "Last 30 days", ms: 30 * 86_400_000, bucket: TimeBucket.DAY, bucketMs: 86_400_000 },
};

export function rangeOf(params: URLSearchParams, now = Date.now()) {
  const key = params.get("range") ?? "24h";
  const range = RANGES[key] ?? RANGES["24h"];
  // The end is rounded up to a whole bucket, so the last bucket is complete and the buckets line up.
  const endMs = Math.ceil((now + 1) / range.bucketMs) * range.bucketMs;
  const startMs = endMs - range.ms;
  return { key: RANGES[key] ? key : "24h", ...range, startMs, endMs, start: timestampFromMs(startMs), end: timestampFromMs(endMs) };
}

/** Every bucket start of [startMs, endMs), so a quiet bucket is drawn as zero rather than left out. */
export function bucketStarts(startMs: number, endMs: number, bucketMs: number): number[] {
  const starts: number[] = [];
  for (let at = startMs; at < endMs; at += bucketMs) starts.push(at);
  return starts;
}
