// Scores and feedback as the console reads and writes them (pure functions; the components are in
// RequestScores.tsx, the table cell and URL filters in format.ts and filters.ts).
import { formatCount, formatScore } from "./format";
import type { RequestMetrics } from "./gen/candela/query/v1/query_service_pb";

/** A score typed into the form: a number, or true / false (stored as 1 / 0, as the API does). */
export function parseScoreValue(text: string): number | undefined {
  const trimmed = text.trim().toLowerCase();
  if (trimmed === "true") return 1;
  if (trimmed === "false") return 0;
  if (!/^-?\d+(\.\d+)?$/.test(trimmed)) return undefined;
  return Number(trimmed);
}

/** The feedback's positive rate and each score's mean, with how many requests each is over. */
export function scoreTotals(metrics: RequestMetrics): [string, string, string][] {
  const totals: [string, string, string][] = [];
  const rated = metrics.scoreCounts.feedback;
  if (rated) {
    totals.push(["Positive feedback", `${((metrics.scoreAverages.feedback ?? 0) * 100).toFixed(1)}%`, `of ${formatCount(rated)} rated`]);
  }
  for (const [name, mean] of Object.entries(metrics.scoreAverages).sort(([a], [b]) => a.localeCompare(b))) {
    if (name !== "feedback") totals.push([`Score ${name} (mean)`, formatScore(mean), `${formatCount(metrics.scoreCounts[name] ?? 0n)} scored`]);
  }
  return totals;
}

