// The console's navigation lives in the URL fragment (`#/requests?model=...`): it never reaches a server,
// so every gateway path keeps its meaning, and a view is a link that can be shared.
import { useEffect, useState } from "react";

export interface Route {
  page: string;
  params: URLSearchParams;
}

export function parseHash(hash: string): Route {
  const [path, query = ""] = hash.replace(/^#/, "").split("?", 2);
  const page = path.replace(/^\/+/, "").split("/")[0] || "requests";
  return { page, params: new URLSearchParams(query) };
}

export function hrefFor(page: string, params?: URLSearchParams): string {
  const query = params?.toString();
  return `#/${page}${query ? `?${query}` : ""}`;
}

export function navigate(page: string, params?: URLSearchParams): void {
  window.location.hash = hrefFor(page, params);
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseHash(window.location.hash));
  useEffect(() => {
    const changed = () => setRoute(parseHash(window.location.hash));
    window.addEventListener("hashchange", changed);
    return () => window.removeEventListener("hashchange", changed);
  }, []);
  return route;
}
