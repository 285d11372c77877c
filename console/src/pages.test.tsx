// Components against an API that fails the way a real one does (ConnectError codes): every failure a
// person can meet is a message in the page that says what to do, never a blank screen.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { cleanup, fireEvent, render, screen } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import type { Api } from "./api";
import { ExportControl } from "./ExportControl";
import { GetRequestResponseSchema } from "./gen/candela/query/v1/query_service_pb";
import { RequestDetail } from "./RequestDetail";
import { RequestsPage } from "./RequestsPage";
import { SignIn } from "./SignIn";

afterEach(cleanup);

function failingApi(code: Code, message = "boom"): Api {
  const fail = async () => {
    throw new ConnectError(message, code);
  };
  const everything = new Proxy({}, { get: () => fail });
  return { query: everything, auth: everything, prompts: everything } as unknown as Api;
}

describe("RequestsPage", () => {
  it("says the API is not answering when the query service is down", async () => {
    render(<RequestsPage api={failingApi(Code.Unavailable)} params={new URLSearchParams()} />);
    expect((await screen.findByRole("alert")).textContent).toMatch(/not answering \(Unavailable\).*retry/);
  });

  it("names a malformed filter in the URL instead of asking the API", async () => {
    render(<RequestsPage api={failingApi(Code.Internal)} params={new URLSearchParams("cost_min=cheap")} />);
    expect((await screen.findByRole("alert")).textContent).toBe('cost_min must be a number, not "cheap"');
  });

  it("tells an empty organization how to get its first request in", async () => {
    const empty = { query: { queryRequests: async () => ({ requests: [], nextCursor: undefined }) } } as unknown as Api;
    render(<RequestsPage api={empty} params={new URLSearchParams()} />);
    expect((await screen.findByText(/No requests yet/)).textContent).toMatch(/Point an OpenAI or Anthropic SDK/);
  });
});

describe("RequestDetail", () => {
  it("says a request id that does not exist was not found", async () => {
    render(<RequestDetail api={failingApi(Code.NotFound)} requestId="00000000-0000-4000-8000-000000000000" onClose={() => {}} />);
    expect((await screen.findByRole("alert")).textContent).toBe("Not found in this organization.");
  });

  it("shows a binary body as its size and content type with a download, and a text body as text", async () => {
    const audio = new Uint8Array(5000).map((_, index) => index % 256);
    const detail = create(GetRequestResponseSchema, {
      request: {
        requestId: "00000000-0000-4000-8000-000000000001",
        provider: "openai",
        path: "/v1/audio/speech",
        properties: { "candela-request-content-type": "application/json", "candela-response-content-type": "audio/mpeg" },
      },
      requestBody: '{"model": "tts-1", "input": "Say hi"}',
      responseBodyBytes: audio,
    });
    const api = { query: { getRequest: async () => detail } } as unknown as Api;
    const { container } = render(<RequestDetail api={api} requestId="00000000-0000-4000-8000-000000000001" onClose={() => {}} />);
    expect((await screen.findByText(/^binary, /)).textContent).toBe("binary, 5,000 bytes, audio/mpeg Download");
    expect(screen.getByRole("button", { name: "Download" })).toBeTruthy();
    expect(container.textContent).toContain('"input": "Say hi"');
    expect(container.textContent).not.toContain("\ufffd");
  });
});

describe("SignIn", () => {
  it("says the API is not answering when the gateway cannot be reached, and keeps the form", async () => {
    render(<SignIn onSignedIn={() => {}} baseUrl="http://127.0.0.1:9" />);
    fireEvent.change(screen.getByLabelText("API key"), { target: { value: "cdl_some_key" } });
    // Nothing listens there (a refused key is the e2e test's: tests/e2e/test_console.py).
    fireEvent.click(screen.getByRole("button", { name: "Sign in" }));
    expect((await screen.findByRole("alert", {}, { timeout: 5000 })).textContent).toMatch(/not answering/);
    expect(screen.getByLabelText("API key")).toBeTruthy();
  });
});

describe("ExportControl", () => {
  it("shows rows and bytes as chunks arrive, and Cancel stops the call", async () => {
    let signal: AbortSignal | undefined;
    const api = {
      query: {
        exportRequests: (_request: unknown, options: { signal: AbortSignal }) => {
          signal = options.signal;
          return (async function* () {
            yield { data: new TextEncoder().encode("request_id\r\n1\r\n2\r\n") };
            // The next page never comes until the call is cancelled.
            await new Promise((_, reject) => options.signal.addEventListener("abort", () => reject(new Error("aborted"))));
          })();
        },
      },
    } as unknown as Api;
    render(<ExportControl api={api} filter={{}} sort={{}} />);
    fireEvent.click(screen.getByRole("button", { name: "Export CSV" }));
    // Progress starts at 0 rows and moves when the chunk has been counted.
    expect(await screen.findByText("Exporting CSV: 2 rows, 18 B", undefined, { timeout: 5000 })).toBeTruthy();
    fireEvent.click(screen.getByRole("button", { name: "Cancel" }));
    expect(await screen.findByText("Export cancelled.", undefined, { timeout: 5000 })).toBeTruthy();
    expect(signal?.aborted).toBe(true);
    expect(screen.getByRole("button", { name: "Export JSONL" })).toBeTruthy();
  });
});
