import { describe, expect, it } from "vitest";
import { sideBySide } from "./PromptsPage";

describe("sideBySide", () => {
  it("pairs removed and added lines and keeps the rest on both sides", () => {
    const diff = ["--- version 1", "+++ version 2", "@@ -1,3 +1,3 @@", " Hello {name}.", "-Be brief.", "+Be brief and kind.", "+Sign as {agent}.", " Bye."].join("\n");
    expect(sideBySide(diff)).toEqual([
      { left: "Hello {name}.", right: "Hello {name}.", change: "same" },
      { left: "Be brief.", right: "Be brief and kind.", change: "changed" },
      { left: "", right: "Sign as {agent}.", change: "added" },
      { left: "Bye.", right: "Bye.", change: "same" },
    ]);
  });
});
