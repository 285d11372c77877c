import { useState } from "react";
import type { Api } from "./api";
import { DashboardPage } from "./DashboardPage";
import { RequestsPage } from "./RequestsPage";
import { useRoute } from "./route";
import { SessionsPage, SessionView } from "./SessionsPage";
import { SignIn } from "./SignIn";
import { UsersPage } from "./UsersPage";

const PAGES = [
  ["requests", "Requests"],
  ["dashboard", "Dashboard"],
  ["sessions", "Sessions"],
  ["users", "Users"],
] as const;

/** The signed-in API lives in this component's state only: a reload or "Sign out" forgets the key. */
export function App() {
  const [api, setApi] = useState<Api | null>(null);
  const route = useRoute();
  if (!api) return <SignIn onSignedIn={setApi} />;
  const current = route.page === "session" ? "sessions" : route.page;
  return (
    <div className="shell">
      <header className="topbar">
        <span className="brand">Candela</span>
        <nav>
          {PAGES.map(([page, title]) => (
            <a key={page} href={`#/${page}`} className={current === page ? "active" : ""} aria-current={current === page ? "page" : undefined}>
              {title}
            </a>
          ))}
        </nav>
        <button type="button" className="quiet" onClick={() => setApi(null)}>
          Sign out
        </button>
      </header>
      <main>
        {route.page === "dashboard" && <DashboardPage api={api} params={route.params} />}
        {route.page === "sessions" && <SessionsPage api={api} params={route.params} />}
        {route.page === "session" && <SessionView api={api} params={route.params} />}
        {route.page === "users" && <UsersPage api={api} params={route.params} />}
        {!["dashboard", "sessions", "session", "users"].includes(route.page) && <RequestsPage api={api} params={route.params} />}
      </main>
    </div>
  );
}
