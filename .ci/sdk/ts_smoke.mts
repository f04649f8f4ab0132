// Drives the live server through openapi-fetch typed by openapi-typescript's output for the
// spec: create, read (optional fields included), list, conditional update, typed error. Usage: node ts_smoke.js BASE KEY
import createClient from "openapi-fetch";
import type { paths } from "./schema.js";

const [baseUrl, key] = process.argv.slice(2);
const client = createClient<paths>({ baseUrl, headers: { Authorization: `Bearer ${key}` } });

function check(condition: boolean, message: string): asserts condition {
  if (!condition) throw new Error(message);
}

const created = await client.POST("/api/v1/users", { body: { name: "Type Script", role: "Tester" } });
check(created.response.status === 201 && created.data !== undefined, "create");
const id = created.data.id;

const fetched = await client.GET("/api/v1/users/{id}", { params: { path: { id } } });
check(fetched.data?.name === "Type Script", "get");
const etag = fetched.response.headers.get("etag") ?? "";
// Fields the server always sends are required in the spec: `string | null`, never undefined.
check(fetched.data !== undefined, "get");
const email: string | null = fetched.data.email;
const createdBy: string | null = fetched.data.created_by;
check(email === null && createdBy !== null, "optional fields");

const page = await client.GET("/api/v1/users", { params: { query: { q: "script", limit: 200 } } });
check(page.data?.items.length === 1 && page.data.items[0].id === id, "list");

const updated = await client.PATCH("/api/v1/users/{id}", {
  params: { path: { id }, header: { "If-Match": etag } },
  body: { role: "Lead" },
});
check(updated.data?.role === "Lead", "conditional update");
const stale = await client.PATCH("/api/v1/users/{id}", {
  params: { path: { id }, header: { "If-Match": etag } },
  body: { role: "X" },
});
check(stale.response.status === 412 && stale.error?.type === "urn:users-api:problem:precondition-failed", "stale tag");

const missing = await client.GET("/api/v1/users/{id}", { params: { path: { id: 987654321 } } });
check(missing.response.status === 404 && missing.error?.status === 404, "typed 404");
console.log("typescript sdk: create, get, list, conditional update and typed errors work");
