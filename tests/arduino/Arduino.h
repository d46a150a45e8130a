/* A host stand-in for the Arduino core, enough for the generated example sketch and the firmware's
 * Arduino port (firmware/src/board/arduino.cpp on a core without a cycle counter): Serial reads
 * stdin and prints to stdout; main() runs setup() once and loop() until stdin is exhausted;
 * digitalWrite prints a t-pin line, micros() advances by 3 per call. */
#ifndef TINYSEEK_TEST_ARDUINO_H
#define TINYSEEK_TEST_ARDUINO_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define F(s) (s)
#define HIGH 1
#define LOW 0
#define OUTPUT 1
#define F_CPU 16000000UL

inline unsigned long micros() {
    static unsigned long t;
    return t += 3;
}
inline void pinMode(int, int) {}
inline void digitalWrite(int pin, int value) { printf("t-pin-%d-%s\r\n", pin, value ? "high" : "low"); }
inline void delayMicroseconds(unsigned int) {}

struct HostSerial {
    int pending = -2; /* -2: nothing peeked yet */
    void begin(unsigned long) {}
    explicit operator bool() const { return true; }
    int available() {
        if (pending == -2) pending = getchar();
        return pending != EOF;
    }
    int read() {
        available();
        int c = pending;
        pending = -2;
        return c;
    }
    size_t write(const uint8_t *s, size_t n) { return fwrite(s, 1, n, stdout); }
    void print(const char *s) { fputs(s, stdout); }
    void print(char c) { putchar(c); }
    void print(int v) { printf("%d", v); }
    void println(const char *s) { printf("%s\n", s); }
    void println(int v) { printf("%d\n", v); }
};

static HostSerial Serial;

void setup();
void loop();

int main() {
    setup();
    while (Serial.available()) loop();
    return 0;
}

#endif
