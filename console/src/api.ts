// The console's only way to the API: clients generated from protos/ (src/gen, by scripts/gen_protos.sh),
// over gRPC-Web through the gateway that served this page. The key lives in memory only: it is sent as a
// header on each call and is never put in a URL, in storage or in a log.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AuthService } from "./gen/candela/auth/v1/auth_service_pb";
import { PromptsService } from "./gen/candela/prompts/v1/prompts_service_pb";
import { QueryService } from "./gen/candela/query/v1/query_service_pb";

export interface Api {
  query: Client<typeof QueryService>;
  auth: Client<typeof AuthService>;
  prompts: Client<typeof PromptsService>;
}

export function connect(apiKey: string, baseUrl: string = window.location.origin): Api {
  const bearer: Interceptor = (next) => (request) => {
    request.header.set("authorization", `Bearer ${apiKey}`);
    return next(request);
  };
  const transport = createGrpcWebTransport({ baseUrl, interceptors: [bearer] });
  return {
    query: createClient(QueryService, transport),
    auth: createClient(AuthService, transport),
    prompts: createClient(PromptsService, transport),
  };
}

/** What to tell a person when a call failed: each failure in words that say what to do next. */
export function explain(error: unknown): string {
  const failure = ConnectError.from(error);
  switch (failure.code) {
    case Code.Unauthenticated:
      return "This API key was not accepted: it may be mistyped, revoked or expired. Sign in with another key.";
    case Code.PermissionDenied:
      return "This key's scopes do not allow this. Sign in with a key that has the scope it needs.";
    case Code.NotFound:
      return "Not found in this organization.";
    case Code.InvalidArgument:
      return `The request was refused: ${failure.rawMessage}`;
    case Code.ResourceExhausted:
      return "Too many requests for now; try again in a moment.";
    case Code.Unavailable:
    case Code.DeadlineExceeded:
    case Code.Unknown:
    case Code.Internal:
      return `The Candela API is not answering (${Code[failure.code]}): check that the gateway and query service are up, then retry.`;
    default:
      return failure.rawMessage || Code[failure.code];
  }
}
