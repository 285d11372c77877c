import { describe, expect, it } from "vitest";
import { bucketStarts, rangeOf } from "./ranges";

describe("rangeOf", () => {
  it("ends on a whole bucket after now and spans the range", () => {
    const now = Date.UTC(2026, 11, 7, 10, 17, 3);
    const range = rangeOf(new URLSearchParams("range=24h"), now);
    expect(range.endMs).toBe(Date.UTC(2026, 11, 7, 11));
    expect(range.endMs - range.startMs).toBe(86_400_000);
    expect(bucketStarts(range.startMs, range.endMs, range.bucketMs)).toHaveLength(24);
  });
  it("falls back to the last 24 hours for an unknown range", () => {
    expect(rangeOf(new URLSearchParams("range=forever")).key).toBe("24h");
  });
});
