// How values of a log read in the console. Costs are exact decimal strings from the API and are shown
// without going through floating point; an unpriced request says so instead of showing $0.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";

export function formatCost(costUsd: string | undefined): string {
  if (costUsd === undefined || costUsd === "") return "unpriced";
  const negative = costUsd.startsWith("-");
  const [whole, fraction = ""] = (negative ? costUsd.slice(1) : costUsd).split(".");
  // Up to 10 decimals (a small call costs millionths of a dollar), trailing zeros dropped, never fewer
  // than 2: $0.0000075, $1.50, $12.00. A cost with more digits is marked as rounded down.
  let shown = fraction.slice(0, 10).replace(/0+$/, "");
  if (shown.length < 2) shown = shown.padEnd(2, "0");
  const cut = fraction.slice(10).replace(/0+$/, "") !== "";
  return `${negative ? "-" : ""}${cut ? "~" : ""}$${whole || "0"}.${shown}`;
}

/** A total in dollars and cents ($2,220.42), marked "~" when that rounds the exact amount (on hover where
 * shown); under a dollar, as formatCost. Rounded half up on the decimal string, never through a float. */
export function formatTotalCost(costUsd: string | undefined): string {
  if (costUsd === undefined || costUsd === "" || costUsd.startsWith("-")) return formatCost(costUsd);
  const [whole, fraction = ""] = costUsd.split(".");
  if (BigInt(whole || "0") < 1n) return formatCost(costUsd);
  const cents = BigInt(whole) * 100n + BigInt(fraction.padEnd(2, "0").slice(0, 2)) + (fraction[2] >= "5" ? 1n : 0n);
  const exact = fraction.slice(2).replace(/0+$/, "") === "";
  const dollars = (cents / 100n).toLocaleString("en-US");
  return `${exact ? "" : "~"}$${dollars}.${String(cents % 100n).padStart(2, "0")}`;
}

export function formatMs(ms: bigint | number | undefined): string {
  if (ms === undefined) return "";
  const value = Number(ms);
  return value < 1000 ? `${value} ms` : `${(value / 1000).toFixed(value < 10_000 ? 2 : 1)} s`;
}

export function formatCount(count: bigint | number): string {
  return Number(count).toLocaleString("en-US");
}

export function formatTime(stamp: Timestamp | undefined): string {
  if (!stamp) return "";
  const date = timestampDate(stamp);
  const pad = (n: number, width = 2) => String(n).padStart(width, "0");
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`
  );
}

export function formatProperties(properties: Record<string, string>): string {
  return Object.entries(properties)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([key, value]) => `${key}=${value}`)
    .join(" ");
}

/** A score's value: integers as they are, other numbers with up to 3 decimals (0.25, 0.333, 4). */
export function formatScore(value: number): string {
  return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(3)));
}

/** A request's scores in one line: the feedback first (▲ up / ▼ down: glyphs every font draws, unlike
 * emoji), then each score by name. */
export function formatScores(scores: Record<string, number> | undefined): string {
  if (!scores) return "";
  const parts: string[] = [];
  if (scores.feedback !== undefined) parts.push(scores.feedback >= 1 ? "▲ up" : "▼ down");
  for (const [name, value] of Object.entries(scores).sort(([a], [b]) => a.localeCompare(b))) {
    if (name !== "feedback") parts.push(`${name}=${formatScore(value)}`);
  }
  return parts.join(" ");
}
