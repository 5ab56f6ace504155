// loragraph's ComfyUI frontend extension. ComfyUI serves ./web as /extensions/<folder>/, so this
// file is /extensions/<folder>/js/loragraph.js and the app module is three levels up.
import { app } from "../../../scripts/app.js";

app.registerExtension({
  name: "loragraph.core",
});
