import { useEffect, useState } from "react";
import type { Api } from "./api";
import { DashboardPage } from "./DashboardPage";
import { PromptsPage } from "./PromptsPage";
import { RequestsPage } from "./RequestsPage";
import { useRoute } from "./route";
import { SessionsPage, SessionView } from "./SessionsPage";
import { SettingsPage } from "./SettingsPage";
import { SignIn } from "./SignIn";
import { UsersPage } from "./UsersPage";

const PAGES = [
  ["requests", "Requests"],
  ["dashboard", "Dashboard"],
  ["sessions", "Sessions"],
  ["users", "Users"],
  ["prompts", "Prompts"],
  ["settings", "Settings"],
] as const;

/** Light or dark: the system's choice until the person picks one (kept in this browser; it is no secret). */
function useTheme(): [string, () => void] {
  const system = window.matchMedia?.("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  const [theme, setTheme] = useState(() => window.localStorage.getItem("candela-theme") ?? system);
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
  }, [theme]);
  return [
    theme,
    () => {
      const next = theme === "dark" ? "light" : "dark";
      window.localStorage.setItem("candela-theme", next);
      setTheme(next);
    },
  ];
}

const OTHER_PAGES = ["dashboard", "sessions", "session", "users", "prompts", "settings"];

/** The signed-in API lives in this component's state only: a reload or "Sign out" forgets the key. */
export function App() {
  const [api, setApi] = useState<Api | null>(null);
  const route = useRoute();
  const [theme, toggleTheme] = useTheme();
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
        <button type="button" className="quiet" onClick={toggleTheme} aria-label="Switch theme">
          {theme === "dark" ? "Light" : "Dark"}
        </button>
        <button type="button" className="quiet" onClick={() => setApi(null)}>
          Sign out
        </button>
      </header>
      <main>
        {route.page === "dashboard" && <DashboardPage api={api} params={route.params} />}
        {route.page === "sessions" && <SessionsPage api={api} params={route.params} />}
        {route.page === "session" && <SessionView api={api} params={route.params} />}
        {route.page === "users" && <UsersPage api={api} params={route.params} />}
        {route.page === "prompts" && <PromptsPage api={api} params={route.params} />}
        {route.page === "settings" && <SettingsPage api={api} />}
        {!OTHER_PAGES.includes(route.page) && <RequestsPage api={api} params={route.params} />}
      </main>
    </div>
  );
}
