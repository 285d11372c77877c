import { useEffect, useRef } from "react";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";

export interface Series {
  label: string;
  values: (number | null)[];
}

/** Axis numbers as a person reads them at a glance: 25K, 1.2M, 0.004. */
const COMPACT = new Intl.NumberFormat("en-US", { notation: "compact", maximumSignificantDigits: 3 });

/** A time-series line chart (uPlot: small and fast). `times` are bucket starts in milliseconds. */
export function Chart({ title, times, series, unit }: { title: string; times: number[]; series: Series[]; unit?: string }) {
  const box = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!box.current) return;
    const palette = ["#d9631e", "#2f6fdf", "#2e9d57", "#a54bd1"];
    const plot = new uPlot(
      {
        width: box.current.clientWidth || 400,
        height: 160,
        legend: { show: series.length > 1 },
        scales: { x: { time: true } },
        axes: [{}, { values: (_, ticks) => ticks.map((tick) => `${COMPACT.format(tick)}${unit ?? ""}`), size: 60 }],
        series: [{}, ...series.map((line, index) => ({ label: line.label, stroke: palette[index % palette.length], width: 1.5 }))],
      },
      [times.map((ms) => ms / 1000), ...series.map((line) => line.values)],
      box.current,
    );
    const resize = () => box.current && plot.setSize({ width: box.current.clientWidth, height: 160 });
    window.addEventListener("resize", resize);
    return () => {
      window.removeEventListener("resize", resize);
      plot.destroy();
    };
  }, [times, series, unit]);
  return (
    <figure className="chart" data-chart={title}>
      <figcaption>{title}</figcaption>
      <div ref={box} />
    </figure>
  );
}
