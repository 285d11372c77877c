import { describe, expect, it } from "vitest";
import { formatCost, formatMs, formatProperties } from "./format";

describe("formatCost", () => {
  it("shows an unpriced request as unpriced, not as $0", () => {
    expect(formatCost(undefined)).toBe("unpriced");
    expect(formatCost("")).toBe("unpriced");
    expect(formatCost("0")).toBe("$0.00");
  });
  it("keeps the exact decimal digits up to ten places", () => {
    expect(formatCost("0.000150000000")).toBe("$0.00015");
    expect(formatCost("0.000007500000")).toBe("$0.0000075");
    expect(formatCost("12.5")).toBe("$12.50");
    expect(formatCost("1234567.123456")).toBe("$1234567.123456");
  });
  it("marks a cost whose digits were cut as approximate", () => {
    expect(formatCost("0.000000000012")).toBe("~$0.00");
    expect(formatCost("0.123456789012")).toBe("~$0.123456789");
  });
});

describe("formatMs", () => {
  it("switches from milliseconds to seconds at one second", () => {
    expect(formatMs(999n)).toBe("999 ms");
    expect(formatMs(1500n)).toBe("1.50 s");
    expect(formatMs(61_000n)).toBe("61.0 s");
    expect(formatMs(undefined)).toBe("");
  });
});

describe("formatProperties", () => {
  it("lists properties sorted by name", () => {
    expect(formatProperties({ team: "search", feature: "chat" })).toBe("feature=chat team=search");
  });
});
