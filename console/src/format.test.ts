import { describe, expect, it } from "vitest";
import { formatCost, formatMs, formatProperties, formatTotalCost } from "./format";

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

describe("formatTotalCost", () => {
  it("shows dollars and cents, rounded half up on the digits and marked when rounded", () => {
    expect(formatTotalCost("2220.416259746612")).toBe("~$2,220.42");
    expect(formatTotalCost("1234567.005")).toBe("~$1,234,567.01");
    expect(formatTotalCost("12.50")).toBe("$12.50");
    expect(formatTotalCost("9.999")).toBe("~$10.00");
  });
  it("leaves amounts under a dollar, and unpriced, to formatCost", () => {
    expect(formatTotalCost("0.0000075")).toBe("$0.0000075");
    expect(formatTotalCost(undefined)).toBe("unpriced");
  });
});
