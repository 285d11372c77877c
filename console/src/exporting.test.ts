import { describe, expect, it } from "vitest";
import { collect, exportFileName, exportRequest, formatBytes, RowCounter } from "./exporting";
import { ExportFormat } from "./gen/candela/query/v1/query_service_pb";

const bytes = (text: string) => new TextEncoder().encode(text);

function countRows(kind: "csv" | "jsonl", chunks: string[]): number {
  const counter = new RowCounter(kind);
  for (const chunk of chunks) counter.add(bytes(chunk));
  return counter.rows;
}

describe("RowCounter", () => {
  it("counts CSV rows without the header, a quoted line break being part of its cell", () => {
    const file = 'request_id,model,error\r\n1,"gpt, ""4o""","line one\r\nline two"\r\n2,x,\r\n';
    expect(countRows("csv", [file])).toBe(2);
  });

  it("follows quotes across chunk boundaries, wherever the chunks are cut", () => {
    const file = 'a,b\r\n"x\n""y""\n",1\r\n"\n",2\r\n3,"z"\r\n';
    for (let cut = 0; cut <= file.length; cut += 1) {
      expect(countRows("csv", [file.slice(0, cut), file.slice(cut)])).toBe(3);
    }
  });

  it("counts JSON Lines one a line (a newline inside a string is escaped in JSON)", () => {
    expect(countRows("jsonl", ['{"a":"x\\ny"}\n{"a"', ":1}\n"])).toBe(2);
    expect(countRows("jsonl", [])).toBe(0);
  });
});

describe("collect", () => {
  it("keeps every chunk as a part and reports progress after each", async () => {
    async function* chunks() {
      yield { data: bytes("request_id\r\n") };
      yield { data: new Uint8Array() };
      yield { data: bytes("1\r\n2\r\n") };
      yield { data: bytes("3\r\n") };
    }
    const progress: Array<[number, number]> = [];
    const file = await collect("csv", chunks(), (rows, size) => progress.push([rows, size]));
    expect(file.parts.length).toBe(3);
    expect(file.rows).toBe(3);
    expect(file.bytes).toBe(21);
    expect(progress).toEqual([
      [0, 12],
      [2, 18],
      [3, 21],
    ]);
    expect(new TextDecoder().decode(new Uint8Array(await new Blob(file.parts as BlobPart[]).arrayBuffer()))).toBe(
      "request_id\r\n1\r\n2\r\n3\r\n",
    );
  });
});

describe("the export request and its file", () => {
  it("asks for the listed filter and sort in the chosen format, with no row cap", () => {
    const filter = { model: "gpt-4o" };
    const sort = { field: "cost_usd", ascending: true };
    expect(exportRequest("csv", filter, sort)).toEqual({ format: ExportFormat.CSV, filter, sort });
    expect(exportRequest("jsonl", {}, {}).format).toBe(ExportFormat.JSONL);
  });

  it("names the file by what and when, with no character a file system refuses", () => {
    expect(exportFileName("csv", new Date("2026-12-07T14:03:05.123Z"))).toBe("candela-requests-2026-12-07T14-03-05.csv");
    expect(exportFileName("jsonl", new Date(0))).toBe("candela-requests-1970-01-01T00-00-00.jsonl");
  });

  it("shows sizes in B, KB and MB", () => {
    expect(formatBytes(512)).toBe("512 B");
    expect(formatBytes(3482)).toBe("3.4 KB");
    expect(formatBytes(12 * 1024 * 1024)).toBe("12.0 MB");
  });
});
