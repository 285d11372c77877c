import { Code, ConnectError } from "@connectrpc/connect";
import { useState, type FormEvent } from "react";
import { explain, type Api } from "./api";
import { formatScore } from "./format";
import { parseScoreValue } from "./scores";

type Scores = Record<string, number>;

/** What a failed submission tells the person: a missing WRITE scope says so plainly. */
export function explainScoring(error: unknown): string {
  if (ConnectError.from(error).code === Code.PermissionDenied) {
    return "This API key may only read: giving feedback or scores needs a key with the WRITE scope.";
  }
  return explain(error);
}

const POLL_MS = 400;
const POLL_LIMIT_MS = 15_000;

/** Submits feedback or scores, then reads the request until the stored scores show them (they travel
 * through the log pipeline), reporting the scores read back. */
function useScoring(api: Api, requestId: string, onScores: (scores: Scores) => void) {
  const [status, setStatus] = useState<{ saving: boolean; message: string; failed: boolean }>({ saving: false, message: "", failed: false });

  async function submit(expected: Scores, send: () => Promise<unknown>) {
    setStatus({ saving: true, message: "Saving...", failed: false });
    try {
      await send();
      const deadline = Date.now() + POLL_LIMIT_MS;
      for (;;) {
        const latest = (await api.query.getRequest({ requestId })).scores;
        const stored = Object.entries(expected).every(([name, value]) => latest[name] === value);
        if (stored || Date.now() > deadline) {
          onScores(latest);
          setStatus({ saving: false, message: stored ? "Saved." : "Sent; it will show once the log pipeline has stored it.", failed: false });
          return;
        }
        await new Promise((resolve) => window.setTimeout(resolve, POLL_MS));
      }
    } catch (failure) {
      setStatus({ saving: false, message: explainScoring(failure), failed: true });
    }
  }

  return { status, submit };
}

/** The request's scores and feedback, with thumbs and a score form (for keys with the WRITE scope). */
export function RequestScores({ api, requestId, scores, onScores }: { api: Api; requestId: string; scores: Scores; onScores: (scores: Scores) => void }) {
  const { status, submit } = useScoring(api, requestId, onScores);
  const [name, setName] = useState("");
  const [value, setValue] = useState("");
  const [formProblem, setFormProblem] = useState("");
  const feedback = scores.feedback;
  const named = Object.entries(scores)
    .filter(([score]) => score !== "feedback")
    .sort(([a], [b]) => a.localeCompare(b));

  const rate = (rating: boolean) => void submit({ feedback: rating ? 1 : 0 }, () => api.query.submitFeedback({ requestId, rating }));

  function addScore(event: FormEvent) {
    event.preventDefault();
    const number = parseScoreValue(value);
    if (!name.trim()) return setFormProblem("Name the score, e.g. accuracy.");
    if (number === undefined) return setFormProblem("A score is a number (e.g. 0.9) or true / false.");
    setFormProblem("");
    const scoreName = name.trim();
    void submit({ [scoreName]: number }, () =>
      api.query.submitScores({ requestId, scores: { [scoreName]: { kind: { case: "numberValue", value: number } } } }),
    );
  }

  return (
    <section className="scores" aria-label="Scores and feedback">
      <h4>Scores and feedback</h4>
      <div className="feedback">
        <span>{feedback === undefined ? "No feedback yet." : feedback >= 1 ? "Feedback: ▲ positive" : "Feedback: ▼ negative"}</span>
        <button type="button" className="quiet" aria-pressed={feedback === 1} disabled={status.saving} onClick={() => rate(true)} aria-label="Thumbs up">
          ▲ Good
        </button>
        <button type="button" className="quiet" aria-pressed={feedback === 0} disabled={status.saving} onClick={() => rate(false)} aria-label="Thumbs down">
          ▼ Bad
        </button>
      </div>
      {named.length > 0 && (
        <dl className="facts" aria-label="Scores">
          {named.map(([score, number]) => (
            <div key={score} className="fact">
              <dt>{score}</dt>
              <dd data-score={score}>{formatScore(number)}</dd>
            </div>
          ))}
        </dl>
      )}
      <form className="score-form" onSubmit={addScore} aria-label="Add a score">
        <input name="score-name" aria-label="Score name" placeholder="score name" value={name} maxLength={128} onChange={(event) => setName(event.target.value)} />
        <input name="score-value" aria-label="Score value" placeholder="0.9 or true" value={value} onChange={(event) => setValue(event.target.value)} />
        <button type="submit" disabled={status.saving}>
          Add score
        </button>
      </form>
      {(formProblem || status.message) && (
        <p role={formProblem || status.failed ? "alert" : "status"} className={formProblem || status.failed ? "error" : "muted"}>
          {formProblem || status.message}
        </p>
      )}
    </section>
  );
}
