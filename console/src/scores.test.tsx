// Scores and feedback in the console: the URL filters, the table cell, the dashboard totals, and the
// detail's thumbs and score form against an API that answers (or refuses) as the real one does.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import type { Api } from "./api";
import { FilterError, filterFromParams } from "./filters";
import { formatScores } from "./format";
import { RequestMetricsSchema } from "./gen/candela/query/v1/query_service_pb";
import { RequestScores } from "./RequestScores";
import { parseScoreValue, scoreTotals } from "./scores";

afterEach(cleanup);

const number = (value: number) => ({ kind: { case: "numberValue", value } });

describe("score and feedback filters in the URL", () => {
  it("turns feedback and score ranges into conditions on the query API", () => {
    const filter = filterFromParams(new URLSearchParams("feedback=up&score.accuracy=0.5..1&score.helpful=1&score.rank=..3"));
    expect(filter.conditions).toEqual([
      { field: "score", propertyKey: "accuracy", operator: "gte", value: number(0.5) },
      { field: "score", propertyKey: "accuracy", operator: "lte", value: number(1) },
      { field: "score", propertyKey: "helpful", operator: "equals", value: number(1) },
      { field: "score", propertyKey: "rank", operator: "lte", value: number(3) },
      { field: "feedback", operator: "equals", value: { kind: { case: "boolValue", value: true } } },
    ]);
    expect(filterFromParams(new URLSearchParams("feedback=down")).conditions).toEqual([
      { field: "feedback", operator: "equals", value: { kind: { case: "boolValue", value: false } } },
    ]);
  });

  it("names a malformed score or feedback parameter", () => {
    expect(() => filterFromParams(new URLSearchParams("score.accuracy=high"))).toThrow(FilterError);
    expect(() => filterFromParams(new URLSearchParams("score.accuracy=.."))).toThrow("needs a bound");
    expect(() => filterFromParams(new URLSearchParams("feedback=maybe"))).toThrow('feedback must be "up" or "down"');
  });
});

describe("formatScores", () => {
  it("shows the feedback as a thumb, then each score by name", () => {
    expect(formatScores({ relevance: 0.33333, feedback: 1, accuracy: 2 })).toBe("▲ up accuracy=2 relevance=0.333");
    expect(formatScores({ feedback: 0 })).toBe("▼ down");
    expect(formatScores(undefined)).toBe("");
  });
});

describe("dashboard score totals", () => {
  it("gives the positive feedback rate and each score's mean with its count", () => {
    const metrics = create(RequestMetricsSchema, {
      scoreAverages: { feedback: 0.25, accuracy: 0.5 },
      scoreCounts: { feedback: 4n, accuracy: 2n },
    });
    expect(scoreTotals(metrics)).toEqual([
      ["Positive feedback", "25.0%", "of 4 rated"],
      ["Score accuracy (mean)", "0.5", "2 scored"],
    ]);
    expect(scoreTotals(create(RequestMetricsSchema, {}))).toEqual([]);
  });
});

describe("RequestScores", () => {
  const requestId = "6b0f7d5e-8a55-4c1f-9f3e-0d1c2b3a4f5e";

  it("sends a thumbs up, waits until the request shows it, and reports the stored scores", async () => {
    const sent: unknown[] = [];
    let reads = 0;
    const api = {
      query: {
        submitFeedback: async (request: unknown) => sent.push(request),
        // The first read is before the writer stored it; the second shows it.
        getRequest: async () => ({ scores: reads++ ? { feedback: 1 } : {} }),
      },
    } as unknown as Api;
    const reported: Record<string, number>[] = [];
    render(<RequestScores api={api} requestId={requestId} scores={{}} onScores={(scores) => reported.push(scores)} />);
    expect(screen.getByText("No feedback yet.")).toBeTruthy();
    fireEvent.click(screen.getByRole("button", { name: "Thumbs up" }));
    expect((await screen.findByText("Saved.", {}, { timeout: 3000 })).getAttribute("role")).toBe("status");
    expect(sent).toEqual([{ requestId, rating: true }]);
    expect(reported).toEqual([{ feedback: 1 }]);
  });

  it("says a read-only key needs the WRITE scope", async () => {
    const api = {
      query: {
        submitScores: async () => {
          throw new ConnectError("this API key lacks the API_KEY_SCOPE_WRITE scope", Code.PermissionDenied);
        },
      },
    } as unknown as Api;
    render(<RequestScores api={api} requestId={requestId} scores={{}} onScores={() => {}} />);
    fireEvent.change(screen.getByPlaceholderText("score name"), { target: { value: "accuracy" } });
    fireEvent.change(screen.getByPlaceholderText("0.9 or true"), { target: { value: "0.9" } });
    fireEvent.click(screen.getByRole("button", { name: "Add score" }));
    expect((await screen.findByRole("alert")).textContent).toMatch(/needs a key with the WRITE scope/);
  });

  it("checks the form before sending anything, and shows score names as text", async () => {
    const api = { query: {} } as unknown as Api;
    const { container } = render(
      <RequestScores api={api} requestId={requestId} scores={{ "<img src=x onerror=alert(1)>": 1, feedback: 0 }} onScores={() => {}} />,
    );
    expect(container.querySelector("img")).toBeNull();
    expect(screen.getByText("<img src=x onerror=alert(1)>")).toBeTruthy();
    expect(screen.getByText("Feedback: ▼ negative")).toBeTruthy();
    fireEvent.click(screen.getByRole("button", { name: "Add score" }));
    expect((await screen.findByRole("alert")).textContent).toBe("Name the score, e.g. accuracy.");
    fireEvent.change(screen.getByPlaceholderText("score name"), { target: { value: "accuracy" } });
    fireEvent.change(screen.getByPlaceholderText("0.9 or true"), { target: { value: "very" } });
    fireEvent.click(screen.getByRole("button", { name: "Add score" }));
    expect((await screen.findByRole("alert")).textContent).toMatch(/number \(e.g. 0.9\) or true/);
  });

  it("reads true and false as 1 and 0", () => {
    expect([parseScoreValue("true"), parseScoreValue(" FALSE "), parseScoreValue("-0.5"), parseScoreValue("1e3")]).toEqual([1, 0, -0.5, undefined]);
  });
});
