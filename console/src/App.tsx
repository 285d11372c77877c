import { useState } from "react";
import type { Api } from "./api";
import { RequestsPage } from "./RequestsPage";
import { SignIn } from "./SignIn";

/** The signed-in API lives in this component's state only: a reload or "Sign out" forgets the key. */
export function App() {
  const [api, setApi] = useState<Api | null>(null);
  if (!api) return <SignIn onSignedIn={setApi} />;
  return (
    <div className="shell">
      <header className="topbar">
        <span className="brand">Candela</span>
        <nav>
          <a href="#/requests" className="active">
            Requests
          </a>
        </nav>
        <button type="button" className="quiet" onClick={() => setApi(null)}>
          Sign out
        </button>
      </header>
      <main>
        <RequestsPage api={api} />
      </main>
    </div>
  );
}
