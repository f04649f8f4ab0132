import createClient from "openapi-fetch";
import type { paths } from "./schema.js";

const client = createClient<paths>({
  baseUrl: process.env.USERS_API_URL,
  headers: { Authorization: `Bearer ${process.env.KEY}` },
});
const { data: ann, error } = await client.POST("/api/v1/users", { body: { name: "Ann", role: "Dev" } });
if (error) throw new Error(`${error.title}: ${error.detail}`);
console.log(ann.id, ann.name, ann.email ?? "(no email)");
const missing = await client.GET("/api/v1/users/{id}", { params: { path: { id: 987654321 } } });
console.log(missing.error?.title, "-", missing.error?.detail);
